"""Every check that turns a misuse into an error saying what happened and how to fix it."""

from __future__ import annotations

import asyncio
import typing as t

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from ._app import EXTENSION_KEY, NOT_INITIALISED, get_state
from ._frameworks import current_app_context
from ._runner import runner
from ._sa_asyncio import AsyncEngine, async_sessionmaker
from .record_queries import _watch_if_recording

if t.TYPE_CHECKING:
    from ._app import AppState
    from ._context import AppContextLike
    from ._types import ScopedLike

_FOREIGN_LOOP = (
    "An async_scoped_session of {app!r} was used from an event loop that is not the app's."
    "\n\nIn a Flask app, the library runs async views, async hooks and the closing of"
    " sessions on one shared event loop, because pooled async connections (asyncpg) only"
    " work on the loop that opened them. This code runs on another loop, {cause}."
    "\n\nTo solve this, let Flask run the coroutine (an async view or hook), or from sync"
    " code (CLI commands, scripts, the shell) call 'session.run(coro)', which awaits it on"
    " the shared loop inside the current app context."
)
_SHARED = "for example under a hand-made asyncio.run(...) or in a thread of its own"
_OPTED_OUT = (
    "because the app was set up with shared_loop=False, so asgiref runs every async view on"
    " a new loop; a scoped AsyncSession cannot live across those loops. Remove"
    " shared_loop=False, or open 'async with factory() as session:' inside each view (with"
    " poolclass=NullPool for asyncpg)"
)
_ASYNC_IN_SYNC = (
    "async_scoped_session was used in sync code (no event loop is running in this thread),"
    " for example in a sync view, where its AsyncSession cannot be awaited. Make the view"
    " 'async def', use a flask_scoped_session for sync views, or, in a CLI command or"
    " script, call 'session.run(coro)' and use the session inside that coroutine."
)
_SYNC_IN_ASYNC = (
    "flask_scoped_session was used in async code on {app!r}'s event loop. Its sync Session"
    " would block that loop, and with it every other request in flight. Use an"
    " async_scoped_session (with create_async_engine) in async views, or make the view a"
    " plain 'def'."
)


def check_new_scope(scoped: ScopedLike, ctx: AppContextLike) -> None:
    """Refuse to open a session in an app that would never close it.

    Then, if the app records queries, make sure its engines are listened to.
    """
    # Inline, not is_initialised(): this runs for every new session.
    state: AppState | None = ctx.app.extensions.get(EXTENSION_KEY)
    if state is None or scoped not in state.members:
        raise RuntimeError(NOT_INITIALISED.format(kind=type(scoped).__name__, app=ctx.app))
    _watch_if_recording(scoped, ctx.app, state)


def _current_app() -> t.Any:
    """The current app, or ``None`` outside a context (where the registry raises itself)."""
    ctx = current_app_context()
    return None if ctx is None else ctx.app


def check_async_access() -> None:
    """The AsyncSession may be used here: in async code, on the app's own loop."""
    loop = asyncio._get_running_loop()
    if loop is None:
        raise TypeError(_ASYNC_IN_SYNC)
    app = _current_app()
    state = get_state(app) if app is not None else None
    if state is None or state.is_quart or runner.owns_running_loop():
        return
    cause = _OPTED_OUT if state.shared_loop is False else _SHARED
    raise RuntimeError(_FOREIGN_LOOP.format(app=app, cause=cause))


def check_sync_access() -> None:
    """The sync Session may be used here: not on an event loop that serves requests.

    That is a Quart request or websocket, or a Flask app's shared loop. A sync-only Flask
    app keeps working as before, even in async views run by asgiref, and so do Quart CLI
    commands, which run inside a loop that waits for them.
    """
    if asyncio._get_running_loop() is None:
        return
    app = _current_app()
    state = get_state(app) if app is not None else None
    if state is None:
        return
    if state.is_quart:
        if state.framework.in_request():
            raise TypeError(_SYNC_IN_ASYNC.format(app=app))
    elif state.shared_loop and runner.owns_running_loop():
        raise TypeError(_SYNC_IN_ASYNC.format(app=app))


_WRONG_FACTORY = {
    False: "flask_scoped_session was given an async_sessionmaker; it makes sync Sessions."
    " Use async_scoped_session(async_sessionmaker(...)) for AsyncSessions, or"
    " flask_scoped_session(sessionmaker(bind=create_engine(url))).",
    True: "async_scoped_session was given a sync sessionmaker; it makes AsyncSessions."
    " Use async_sessionmaker(create_async_engine(url)), or flask_scoped_session for"
    " sync Sessions.",
}
_WRONG_ENGINE = {
    False: "flask_scoped_session was given a sessionmaker bound to an async engine or"
    " driver ({url!r}). Use a sync driver URL (for example 'postgresql+psycopg://' or"
    " 'sqlite:///') with create_engine(), or use async_scoped_session for async drivers.",
    True: "async_scoped_session was given a factory bound to a sync Engine ({url!r})."
    " Create it with create_async_engine() and an async driver URL (for example"
    " 'postgresql+asyncpg://' or 'sqlite+aiosqlite:///').",
}


def check_factory(factory: object, *, is_async: bool) -> None:
    """The session factory makes sessions of the scoped session's kind, on such an engine.

    ``flask_scoped_session`` needs sync sessions on a sync engine, ``async_scoped_session``
    an ``async_sessionmaker`` on an async engine.
    """
    own, other = (
        (async_sessionmaker, sessionmaker) if is_async else (sessionmaker, async_sessionmaker)
    )
    if isinstance(factory, other):
        raise TypeError(_WRONG_FACTORY[is_async])
    bind: object = factory.kw.get("bind") if isinstance(factory, own) else None
    if not isinstance(bind, Engine | AsyncEngine):
        return
    # An AsyncSession needs an AsyncEngine itself; a Session needs a sync driver.
    if (
        isinstance(bind, Engine)
        and (is_async or bind.dialect.is_async)
        or (isinstance(bind, AsyncEngine) and not is_async)
    ):
        raise TypeError(_WRONG_ENGINE[is_async].format(url=bind.url.render_as_string()))
