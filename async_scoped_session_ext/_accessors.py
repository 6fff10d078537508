"""``get_engine()``: the engine a scoped session's sessions use in one app."""

from __future__ import annotations

import typing as t

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from ._app import NOT_INITIALISED, get_state, is_initialised
from ._frameworks import current_app_context
from ._sa_asyncio import AsyncEngine, async_sessionmaker

if t.TYPE_CHECKING:
    from flask.sansio.app import App

    from ._types import AnyEngine, ScopedLike

NO_APP = (
    "{kind}.get_engine() was called outside of an application context, without an app."
    " It returns the engine of the current app (the one made from its config, or the"
    " factory's bind). To solve this, pass the app: 'get_engine(app)', or call it inside"
    " 'with app.app_context():' (Flask) / 'async with app.app_context():' (Quart), a"
    " request or a CLI command."
)
NO_BIND = (
    "{kind}.get_engine() cannot tell which engine {what}, so it has no single engine to"
    " return. Give the session factory one engine with 'bind=engine', or keep a reference"
    " to the engines you made and use those (for Alembic, pass them to your env.py)."
)


def engine_of(scoped: ScopedLike, app: App | None) -> AnyEngine:
    """The engine *scoped*'s sessions use in *app* (the current app when ``None``).

    Made from the app's config (on first use, the very engine its sessions use), or the
    ``bind`` of the session factory given to the constructor. A test's override
    (``testing.isolate``) does not change it: this is the app's real engine.
    """
    kind = type(scoped).__name__
    if app is None:
        ctx = current_app_context()
        if ctx is None:
            raise RuntimeError(NO_APP.format(kind=kind))
        app = t.cast("App", ctx.app)
    state = get_state(app)
    if state is None or not is_initialised(app, scoped):
        raise RuntimeError(NOT_INITIALISED.format(kind=kind, app=app))
    factory = scoped.given_factory
    if factory is None:
        return state.engines.engine(scoped.name, scoped.is_async)
    if not isinstance(factory, sessionmaker | async_sessionmaker):
        what = f"the session factory {factory!r} (not a sessionmaker) makes sessions on"
        raise TypeError(NO_BIND.format(kind=kind, what=what))
    bind = factory.kw.get("bind")
    expected = AsyncEngine if scoped.is_async else Engine
    if not isinstance(bind, expected):  # the constructor refused the other kind of engine
        what = (
            "its sessions use: the session factory has only 'binds' (an engine per model or table)"
            if factory.kw.get("binds")
            else "its sessions use: the session factory has no 'bind'"
        )
        raise RuntimeError(NO_BIND.format(kind=kind, what=what))
    return bind
