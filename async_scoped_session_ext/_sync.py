"""``flask_scoped_session``: a sync ``scoped_session`` scoped to the Flask app context."""

from __future__ import annotations

import contextlib
import typing as t

from sqlalchemy import Engine, MetaData
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from typing_extensions import TypeVar

from ._base import ScopedBase
from ._context import ContextRegistry
from ._frameworks import current_app_context
from ._misuse import check_sync_access
from ._page_methods import SyncPages

if t.TYPE_CHECKING:
    from flask.sansio.app import App

    from ._app import AppState
    from ._models import DeclarativeLike

_S = TypeVar("_S", bound=Session, default=Session)


class flask_scoped_session(ScopedBase["sessionmaker[_S]", _S], scoped_session[_S], SyncPages):
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
    :param metadata: the metadata of the models in this session's database, for
        ``flask db create-all`` and migrations (see :doc:`migrations`): ``Base.metadata``,
        or the declarative base class ``Base`` itself, whose models ``flask shell`` /
        ``quart shell`` then offer.
    :param commit_on_success: commit the context's session after the view returned a
        response with a status below 400, before it is sent (see
        :doc:`signals-and-commits`).
    """

    is_async: t.ClassVar[bool] = False
    _check_access = staticmethod(check_sync_access)
    registry: ContextRegistry[_S]

    def __init__(
        self,
        session_factory: sessionmaker[_S] | t.Callable[[], _S] | None = None,
        app: App | None = None,
        *,
        name: str = "default",
        session_options: t.Mapping[str, t.Any] | None = None,
        metadata: MetaData | DeclarativeLike | None = None,
        commit_on_success: bool = False,
    ) -> None:
        # SQLAlchemy only calls the factory (and configure() needs a sessionmaker).
        factory = t.cast("sessionmaker[_S]", session_factory)
        super().__init__(factory, scopefunc=current_app_context)
        self._setup(app, name, session_options, metadata, commit_on_success)

    def get_engine(self, app: App | None = None) -> Engine:
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
        return t.cast(Engine, self._engine(app))

    def _init_app(self, app: App, state: AppState) -> None:
        # Flask-SQLAlchemy-Session's public attribute (the default session); untyped on App.
        app.scoped_session = state.sync_default  # type: ignore[attr-defined]

    def remove(self) -> None:
        """Close and forget the current context's session, if it has one.

        The session leaves the registry before it is closed, so a failing close can never
        leave a broken session behind for the next user of the context. Outside an app
        context there is nothing to remove, and nothing happens.
        """
        session = self.registry.pop()
        if session is not None:
            session.close()

    def close_session(self, session: _S) -> None:
        """Close *session* (a session this scoped session made) now."""
        session.close()

    @contextlib.contextmanager
    def fresh(self, **kw: t.Any) -> t.Iterator[_S]:
        """A new session of its own, closed when the block ends.

        For work that must not share the context's session: a thread of its own, or a unit
        of work committed independently of the request. Keyword arguments go to the session
        factory.
        """
        session: _S = self._open_fresh(**kw)
        try:
            yield session
        finally:
            try:
                session.close()
            finally:
                self._fresh_closed()
