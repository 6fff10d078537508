"""``flask_scoped_session``: a sync ``scoped_session`` scoped to the Flask app context."""

from __future__ import annotations

import contextlib
import functools
import typing as t

from sqlalchemy import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from typing_extensions import TypeVar

from ._app import register, session_factory_for
from ._engines import guard_fork
from ._misuse import check_new_scope, check_sync_access, check_sync_factory
from ._scope import ContextRegistry, scope_key

if t.TYPE_CHECKING:
    from flask.sansio.app import App

_S = TypeVar("_S", bound=Session, default=Session)


class flask_scoped_session(scoped_session[_S]):
    """A :class:`~sqlalchemy.orm.scoped_session` whose scope is the current app context.

    A drop-in replacement for Flask-SQLAlchemy-Session 1.1: every app context (so every
    request, CLI command or hand-pushed ``with app.app_context()``) gets its own
    :class:`~sqlalchemy.orm.Session`, and :meth:`remove` is called once when the context is
    torn down, which rolls back uncommitted work and returns the connection to the pool.

    :param session_factory: a :class:`~sqlalchemy.orm.sessionmaker` (or any callable
        returning a :class:`~sqlalchemy.orm.Session`). Without one, each app makes its own
        from its config on first use: the engine ``app.config["SQLALCHEMY_ENGINES"][name]``.
    :param app: a Flask (or Quart) app; when given, :meth:`init_app` is called with it.
    :param name: the engine's name in the config (``"default"``), when there is no factory.
    :param session_options: keyword arguments for that ``sessionmaker``.
    """

    is_async: t.ClassVar[bool] = False
    registry: ContextRegistry[_S]

    def __init__(
        self,
        session_factory: sessionmaker[_S] | t.Callable[[], _S] | None = None,
        app: App | None = None,
        *,
        name: str = "default",
        session_options: t.Mapping[str, t.Any] | None = None,
    ) -> None:
        check_sync_factory(session_factory)
        self.name = name
        self.session_options: dict[str, t.Any] = dict(session_options or {})
        # SQLAlchemy only calls the factory (and configure() needs a sessionmaker).
        super().__init__(t.cast("sessionmaker[_S]", session_factory), scopefunc=scope_key)
        self.registry = ContextRegistry(
            lambda: self.session_factory(), functools.partial(check_new_scope, self)
        )
        if app is not None:
            self.init_app(app)

    @property
    def session_factory(self) -> sessionmaker[_S]:
        """The factory given to the constructor, or the current app's, made from its config."""
        return t.cast("sessionmaker[_S]", session_factory_for(self, self._session_factory))

    @session_factory.setter
    def session_factory(self, factory: sessionmaker[_S] | None) -> None:
        self._session_factory = factory

    def init_app(self, app: App) -> None:
        """Scope sessions to *app*'s contexts and remove them at context teardown.

        Sets ``app.scoped_session`` to the app's default sync scoped session (this one,
        unless it has another ``name``), as Flask-SQLAlchemy-Session did.
        """
        state = register(app, self)
        bind = getattr(self._session_factory, "kw", {}).get("bind")
        if isinstance(bind, Engine):
            guard_fork(bind)  # a forked worker must not share the parent's connections
        # Flask-SQLAlchemy-Session's public attribute (the default session); untyped on App.
        app.scoped_session = state.sync_default  # type: ignore[attr-defined]

    def remove(self) -> None:
        """Close and forget the current context's session, if it has one.

        The session leaves the registry before it is closed, so a failing close can never
        leave a broken session behind for the next user of the context.
        """
        session = self.registry.pop()
        if session is not None:
            session.close()

    def __call__(self, **kw: t.Any) -> _S:
        check_sync_access()
        return super().__call__(**kw)

    @property
    def _proxied(self) -> _S:
        check_sync_access()
        return self.registry()

    @contextlib.contextmanager
    def fresh(self, **kw: t.Any) -> t.Iterator[_S]:
        """A new session of its own, closed when the block ends.

        For work that must not share the context's session: a thread of its own, or a unit
        of work committed independently of the request. Keyword arguments go to the session
        factory.
        """
        session = self.session_factory(**kw)
        try:
            yield session
        finally:
            session.close()
