"""``async_scoped_session``: an ``AsyncSession`` scoped to the Quart or Flask app context."""

from __future__ import annotations

import contextlib
import functools
import typing as t

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import async_scoped_session as _sa_async_scoped_session
from typing_extensions import TypeVar

from ._app import get_state, register, session_factory_for
from ._connect import connect_outside_context
from ._engines import guard_fork
from ._guard import GUARDED_METHODS, busy_elsewhere, guarded
from ._misuse import check_async_access, check_async_factory, check_new_scope
from ._runner import loop_running, runner
from ._scope import ContextRegistry, current_app_context, in_request, scope_key
from ._teardown import close_to_completion

if t.TYPE_CHECKING:
    from flask import Flask
    from flask.sansio.app import App

_AS = TypeVar("_AS", bound=AsyncSession, default=AsyncSession)
_T = t.TypeVar("_T")


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
        Without one, each app makes its own from its config on first use: the engine
        ``app.config["SQLALCHEMY_ASYNC_ENGINES"][name]``.
    :param app: a Quart or Flask app; when given, :meth:`init_app` is called with it.
    :param name: the engine's name in the config (``"default"``), when there is no factory.
    :param session_options: keyword arguments for that ``async_sessionmaker``.
    :param close_timeout: seconds a close may take at teardown before the session's
        connections are invalidated instead of returned to the pool.
    :param shared_loop: Flask only. ``False`` keeps asgiref's default of a new event loop
        per async view; the scoped session then refuses to work (see the docs).
    """

    is_async: t.ClassVar[bool] = True
    registry: ContextRegistry[_AS]

    def __init__(
        self,
        session_factory: async_sessionmaker[_AS] | None = None,
        app: App | None = None,
        *,
        name: str = "default",
        session_options: t.Mapping[str, t.Any] | None = None,
        close_timeout: float = 10.0,
        shared_loop: bool = True,
    ) -> None:
        check_async_factory(session_factory)
        self.name = name
        self.session_options: dict[str, t.Any] = dict(session_options or {})
        super().__init__(t.cast("async_sessionmaker[_AS]", session_factory), scopefunc=scope_key)
        self.registry = ContextRegistry(
            lambda: self.session_factory(), functools.partial(check_new_scope, self)
        )
        self.close_timeout = close_timeout
        self.shared_loop = shared_loop
        if app is not None:
            self.init_app(app)

    @property
    def session_factory(self) -> async_sessionmaker[_AS]:
        """The factory given to the constructor, or the current app's, made from its config."""
        return t.cast("async_sessionmaker[_AS]", session_factory_for(self, self._session_factory))

    @session_factory.setter
    def session_factory(self, factory: async_sessionmaker[_AS] | None) -> None:
        self._session_factory = factory

    def init_app(self, app: App) -> None:
        """Scope sessions to *app*'s contexts and close them at context teardown.

        On a Flask app this also routes the app's async code to the shared event loop
        (unless ``shared_loop=False``) and disposes the session factory's engine there when
        the process exits.
        """
        state = register(app, self)
        bind = self._session_factory.kw.get("bind") if self._session_factory else None
        if isinstance(bind, AsyncEngine):
            guard_fork(bind)  # a forked worker must not share the parent's connections
            connect_outside_context(bind)  # a pooled connection must not pin a request's context
        if state.is_quart:
            return
        state.shared_loop = self.shared_loop
        if self.shared_loop:
            flask_app = t.cast("Flask", app)
            flask_app.async_to_sync = runner.async_to_sync  # type: ignore[method-assign]
        if isinstance(bind, AsyncEngine):
            runner.dispose_at_exit(bind)

    def __call__(self, **kw: t.Any) -> _AS:
        check_async_access()
        return super().__call__(**kw)

    @property
    def _proxied(self) -> _AS:
        check_async_access()
        return self.registry()

    async def remove(self) -> None:
        """Close and forget the current context's session, if it has one.

        The session leaves the registry first. An operation another task still has in
        progress on it may finish first; then the session is closed to completion under
        :func:`asyncio.shield`, and a cancellation of the caller is re-raised afterwards.
        """
        session = self.registry.pop()
        if session is not None:
            busy = busy_elsewhere(session)
            await close_to_completion(session, self.close_timeout, busy)

    @contextlib.asynccontextmanager
    async def fresh(self, **kw: t.Any) -> t.AsyncIterator[_AS]:
        """A new session of its own, closed when the block ends, for concurrent tasks.

        The scoped session is shared by every task of an app context, and an
        ``AsyncSession`` must not be used concurrently. Tasks started with
        ``asyncio.gather`` or ``asyncio.create_task``, and tasks that outlive the request,
        use ``async with scoped.fresh() as session:`` instead. Keyword arguments go to the
        session factory.
        """
        session = self.session_factory(**kw)
        try:
            yield session
        finally:
            await close_to_completion(session, self.close_timeout)

    def run(self, coro: t.Coroutine[t.Any, t.Any, _T]) -> _T:
        """Run *coro* on the shared event loop from sync code, and return its result.

        For CLI commands, scripts and the shell: the coroutine sees the current app context,
        so it can ``await current_session.execute(...)``. In a Flask app the session lives
        until the context is torn down. In a Quart app (whose CLI runs commands inside a
        loop of its own) the context's async sessions are closed when *coro* is done, on
        the loop that used them. Calling it while handling a request raises: await instead.
        """
        if runner.is_loop_thread() or (loop_running() and in_request()):
            coro.close()
            raise RuntimeError(
                "async_scoped_session.run() was called from async code that handles a"
                " request. It is for sync code (CLI commands, scripts, the shell); in async"
                " code, await the coroutine directly."
            )
        ctx = current_app_context()
        state = get_state(ctx.app) if ctx is not None else None
        if state is not None and state.is_quart:
            own = [s for s in state.scoped if isinstance(s, async_scoped_session)]
            return runner.run(_then_remove(coro, own))
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


async def _then_remove(
    coro: t.Coroutine[t.Any, t.Any, _T], scoped_sessions: t.Sequence[async_scoped_session[t.Any]]
) -> _T:
    try:
        return await coro
    finally:
        for scoped in scoped_sessions:
            await scoped.remove()


for _name in GUARDED_METHODS:
    # Same signatures as SQLAlchemy's proxies (so their types stay), plus the claim.
    setattr(
        async_scoped_session,
        _name,
        functools.wraps(getattr(async_scoped_session, _name))(guarded(_name)),
    )
