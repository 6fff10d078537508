"""``async_scoped_session``: an ``AsyncSession`` scoped to the Quart app context."""

from __future__ import annotations

import typing as t

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import async_scoped_session as _sa_async_scoped_session

from ._app import is_quart_app, register
from ._scope import ContextRegistry, scope_key
from ._teardown import close_to_completion

if t.TYPE_CHECKING:
    from flask.sansio.app import App

_AS = t.TypeVar("_AS", bound=AsyncSession)


class async_scoped_session(_sa_async_scoped_session[_AS]):
    """An :class:`~sqlalchemy.ext.asyncio.async_scoped_session` scoped to the app context.

    Every app context (each request, background task or ``async with app.app_context()``)
    gets its own :class:`~sqlalchemy.ext.asyncio.AsyncSession`. At context teardown the
    session is taken out of the registry and closed to completion, even when the request
    task is cancelled because the client went away.

    :param session_factory: an :class:`~sqlalchemy.ext.asyncio.async_sessionmaker`.
    :param app: a Quart app; when given, :meth:`init_app` is called with it.
    :param close_timeout: seconds a close may take at teardown before the session's
        connections are invalidated instead of returned to the pool.
    """

    is_async: t.ClassVar[bool] = True
    registry: ContextRegistry[_AS]

    def __init__(
        self,
        session_factory: async_sessionmaker[_AS],
        app: App | None = None,
        *,
        close_timeout: float = 10.0,
    ) -> None:
        super().__init__(session_factory, scopefunc=scope_key)
        self.registry = ContextRegistry(session_factory)
        self.close_timeout = close_timeout
        if app is not None:
            self.init_app(app)

    def init_app(self, app: App) -> None:
        """Scope sessions to *app*'s contexts and close them at context teardown."""
        if not is_quart_app(app):
            raise RuntimeError(
                f"async_scoped_session cannot be initialised on {app!r} yet: only Quart"
                " apps are supported in this version. Flask runs every async view on a new"
                " event loop, which breaks pooled async engines such as asyncpg. Use a Quart"
                " app, or flask_scoped_session with a sync engine for Flask."
            )
        register(app, self)

    async def remove(self) -> None:
        """Close and forget the current context's session, if it has one.

        The session leaves the registry first, then is closed to completion under
        :func:`asyncio.shield`; a cancellation of the caller is re-raised afterwards.
        """
        session = self.registry.pop()
        if session is not None:
            await close_to_completion(session, self.close_timeout)

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
