"""``async_scoped_session``: an ``AsyncSession`` scoped to the Quart or Flask app context."""

from __future__ import annotations

import contextlib
import functools
import typing as t

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import async_scoped_session as _sa_async_scoped_session
from typing_extensions import TypeVar

from ._app import get_state, use_shared_loop
from ._base import ScopedBase
from ._close import close_all, close_to_completion
from ._context import ContextRegistry, record_of
from ._frameworks import current_app_context
from ._guard import GUARDED_METHODS, busy_elsewhere, guarded
from ._misuse import check_async_access
from ._page_methods import AsyncPages
from ._runner import loop_running, runner

if t.TYPE_CHECKING:
    from flask.sansio.app import App

    from ._app import AppState
    from ._models import DeclarativeLike

_AS = TypeVar("_AS", bound=AsyncSession, default=AsyncSession)
_T = t.TypeVar("_T")


class async_scoped_session(
    ScopedBase["async_sessionmaker[_AS]", _AS], _sa_async_scoped_session[_AS], AsyncPages
):
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
    :param metadata: the metadata of the models in this session's database, for
        ``flask db create-all`` and migrations (see :doc:`migrations`): ``Base.metadata``,
        or the declarative base class ``Base`` itself, whose models ``flask shell`` /
        ``quart shell`` then offer.
    :param commit_on_success: commit the context's session after the view returned a
        response with a status below 400, before it is sent (see
        :doc:`signals-and-commits`).
    :param close_timeout: seconds a close may take at teardown before the session's
        connections are invalidated instead of returned to the pool.
    :param shared_loop: Flask only, and app-wide. ``False`` keeps asgiref's default of a
        new event loop per async view; the scoped session then refuses to work (see the
        docs). Every async scoped session of one app must give the same value.
    """

    is_async: t.ClassVar[bool] = True
    _check_access = staticmethod(check_async_access)
    registry: ContextRegistry[_AS]

    def __init__(
        self,
        session_factory: async_sessionmaker[_AS] | None = None,
        app: App | None = None,
        *,
        name: str = "default",
        session_options: t.Mapping[str, t.Any] | None = None,
        metadata: MetaData | DeclarativeLike | None = None,
        commit_on_success: bool = False,
        close_timeout: float = 10.0,
        shared_loop: bool = True,
    ) -> None:
        factory = t.cast("async_sessionmaker[_AS]", session_factory)
        super().__init__(factory, scopefunc=current_app_context)
        self.close_timeout = close_timeout
        self.shared_loop = shared_loop
        self._setup(app, name, session_options, metadata, commit_on_success)

    def get_engine(self, app: App | None = None) -> AsyncEngine:
        """The engine this scoped session's sessions use in *app* (default: the current app).

        The engine made from the app's config for this scoped session's name (made now if
        no session used it yet: the same object the sessions use), or the ``bind`` of the
        session factory given to the constructor. Works outside any context when *app* is
        given; for Alembic's ``env.py``, the shell, scripts. A test's
        :func:`~async_scoped_session_ext.testing.isolate` does not change the answer.

        :raises RuntimeError: outside an app context without *app*; when this scoped
            session is not initialised on the app; when its factory has no ``bind``.
        :raises TypeError: when its factory is not a sessionmaker.
        """
        return t.cast(AsyncEngine, self._engine(app))

    def _init_app(self, app: App, state: AppState) -> None:
        """On a Flask app, route the app's async code to the shared event loop."""
        use_shared_loop(app, state, self.shared_loop)

    async def remove(self) -> None:
        """Close and forget the current context's session, if it has one.

        The session leaves the registry first. An operation another task still has in
        progress on it may finish first; then the session is closed to completion under
        :func:`asyncio.shield`, and a cancellation of the caller is re-raised afterwards.
        Outside an app context there is nothing to remove, and nothing happens.
        """
        session = self.registry.pop()
        if session is not None:
            await self.close_session(session)

    def close_session(self, session: _AS) -> t.Coroutine[t.Any, t.Any, None]:
        """Close *session* to completion (see :meth:`remove`), when awaited."""
        return close_to_completion(session, self.close_timeout, busy_elsewhere(session))

    @contextlib.asynccontextmanager
    async def fresh(self, **kw: t.Any) -> t.AsyncIterator[_AS]:
        """A new session of its own, closed when the block ends, for concurrent tasks.

        The scoped session is shared by every task of an app context, and an
        ``AsyncSession`` must not be used concurrently. Tasks started with
        ``asyncio.gather`` or ``asyncio.create_task``, and tasks that outlive the request,
        use ``async with scoped.fresh() as session:`` instead. Keyword arguments go to the
        session factory. It makes the same checks as the scoped session (async code, the
        app's own event loop).
        """
        session: _AS = self._open_fresh(**kw)
        try:
            yield session
        finally:
            try:
                await close_to_completion(session, self.close_timeout)
            finally:
                self._fresh_closed()

    def run(self, coro: t.Coroutine[t.Any, t.Any, _T]) -> _T:
        """Run *coro* on the shared event loop from sync code, and return its result.

        For CLI commands, scripts and the shell: the coroutine sees the current app context,
        so it can ``await current_session.execute(...)``. In a Flask app the session lives
        until the context is torn down. In a Quart app (whose CLI runs commands inside a
        loop of its own) the context's async sessions are closed when *coro* is done, on
        the loop that used them; every one is closed even if one close fails (that failure
        is logged, as at teardown), and *coro*'s own result or error is what ``run()``
        returns or raises. Calling it while handling a request raises: await instead.
        """
        ctx = current_app_context()
        state = get_state(ctx.app) if ctx is not None else None
        in_request = state is not None and state.framework.in_request()
        if runner.is_loop_thread() or (loop_running() and in_request):
            coro.close()
            raise RuntimeError(
                "async_scoped_session.run() was called from async code that handles a"
                " request. It is for sync code (CLI commands, scripts, the shell); in async"
                " code, await the coroutine directly."
            )
        if state is not None and state.is_quart:
            return runner.run(_then_close_async_sessions(coro))
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


async def _then_close_async_sessions(coro: t.Coroutine[t.Any, t.Any, _T]) -> _T:
    """Await *coro*, then close the current context's async sessions, as a teardown would."""
    try:
        return await coro
    finally:
        ctx = current_app_context()
        record = record_of(ctx) if ctx is not None else None
        if record is not None:
            await close_all(record.take(only_async=True))


for _name in GUARDED_METHODS:
    # Same signatures as SQLAlchemy's proxies (so their types stay), plus the claim.
    setattr(
        async_scoped_session,
        _name,
        functools.wraps(getattr(async_scoped_session, _name))(guarded(_name)),
    )
