"""``async_scoped_session``: an ``AsyncSession`` scoped to the Quart or Flask app context."""

from __future__ import annotations

import functools
import typing as t

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import async_scoped_session as _sa_async_scoped_session

from ._app import get_state, register, require_initialised
from ._runner import loop_running, runner
from ._scope import ContextRegistry, scope_key
from ._teardown import close_to_completion

if t.TYPE_CHECKING:
    from flask import Flask
    from flask.sansio.app import App

_AS = t.TypeVar("_AS", bound=AsyncSession)
_T = t.TypeVar("_T")

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


class async_scoped_session(_sa_async_scoped_session[_AS]):
    """An :class:`~sqlalchemy.ext.asyncio.async_scoped_session` scoped to the app context.

    Every app context (each request, background task or pushed app context) gets its own
    :class:`~sqlalchemy.ext.asyncio.AsyncSession`. At context teardown the session is taken
    out of the registry and closed to completion, even when the request task is cancelled
    because the client went away.

    In a Flask app, the app's async views, async hooks and async teardowns are run on one
    long-lived event loop per process (``app.async_to_sync`` is replaced), so a pooled
    ``AsyncEngine`` works across requests. Blocking code in one async view therefore blocks
    the process's other async views.

    :param session_factory: an :class:`~sqlalchemy.ext.asyncio.async_sessionmaker`.
    :param app: a Quart or Flask app; when given, :meth:`init_app` is called with it.
    :param close_timeout: seconds a close may take at teardown before the session's
        connections are invalidated instead of returned to the pool.
    :param shared_loop: Flask only. ``False`` keeps asgiref's default of a new event loop
        per async view; the scoped session then refuses to work (see the docs).
    """

    is_async: t.ClassVar[bool] = True
    registry: ContextRegistry[_AS]

    def __init__(
        self,
        session_factory: async_sessionmaker[_AS],
        app: App | None = None,
        *,
        close_timeout: float = 10.0,
        shared_loop: bool = True,
    ) -> None:
        super().__init__(session_factory, scopefunc=scope_key)
        self.registry = ContextRegistry(
            session_factory, functools.partial(require_initialised, self)
        )
        self.close_timeout = close_timeout
        self.shared_loop = shared_loop
        if app is not None:
            self.init_app(app)

    def init_app(self, app: App) -> None:
        """Scope sessions to *app*'s contexts and close them at context teardown.

        On a Flask app this also routes the app's async code to the shared event loop
        (unless ``shared_loop=False``) and disposes the session factory's engine there when
        the process exits.
        """
        state = register(app, self)
        if state.is_quart:
            return
        state.shared_loop = self.shared_loop
        if self.shared_loop:
            flask_app = t.cast("Flask", app)
            flask_app.async_to_sync = runner.async_to_sync  # type: ignore[method-assign]
        bind = self.session_factory.kw.get("bind")
        if isinstance(bind, AsyncEngine):
            runner.dispose_at_exit(bind)

    def __call__(self, **kw: t.Any) -> _AS:
        self._check_loop()
        return super().__call__(**kw)

    @property
    def _proxied(self) -> _AS:
        self._check_loop()
        return self.registry()

    def _check_loop(self) -> None:
        """In a Flask app, refuse to hand out the session on a loop other than the shared one."""
        app = scope_key().app
        state = get_state(app)
        if state is None or state.is_quart:
            return
        if runner.owns_running_loop() or not loop_running():
            return
        cause = _SHARED if state.shared_loop else _OPTED_OUT
        raise RuntimeError(_FOREIGN_LOOP.format(app=app, cause=cause))

    async def remove(self) -> None:
        """Close and forget the current context's session, if it has one.

        The session leaves the registry first, then is closed to completion under
        :func:`asyncio.shield`; a cancellation of the caller is re-raised afterwards.
        """
        session = self.registry.pop()
        if session is not None:
            await close_to_completion(session, self.close_timeout)

    def run(self, coro: t.Coroutine[t.Any, t.Any, _T]) -> _T:
        """Run *coro* on the shared event loop from sync code, and return its result.

        For Flask CLI commands, scripts and the shell: the coroutine sees the current app
        context, so it can ``await current_session.execute(...)``; the session is closed when
        that context is torn down. Calling it from async code raises: await instead.
        """
        if loop_running():
            coro.close()
            raise RuntimeError(
                "async_scoped_session.run() was called while an event loop is running in this"
                " thread. It is for sync code (CLI commands, scripts); in async code, await"
                " the coroutine directly."
            )
        return runner.run(coro)

    def query_property(self, *args: object, **kwargs: object) -> t.NoReturn:
        """Not available: an ``AsyncSession`` has no legacy ``Query`` API.

        ``Model.query`` would run blocking I/O inside an async view. Query with
        ``await session.scalars(select(Model))`` or ``await session.get(Model, pk)``.
        """
        raise TypeError(
            "async_scoped_session has no query_property(): an AsyncSession has no legacy"
            " Query API, and 'Model.query' would run blocking I/O in an async view. Use"
            " 'await session.scalars(select(Model))' or 'await session.get(Model, pk)', or"
            " flask_scoped_session(...).query_property() for sync code."
        )
