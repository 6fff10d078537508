"""What ``flask_scoped_session`` and ``async_scoped_session`` share: one base for both."""

from __future__ import annotations

import functools
import threading
import typing as t
import weakref

from ._accessors import engine_of
from ._app import get_state, register, session_factory_for
from ._changes import keep_tracking, track_changes
from ._commit import commit_on_success
from ._context import ContextRegistry
from ._engines import adopt
from ._frameworks import current_app_context
from ._misuse import check_factory, check_new_scope
from ._models import split_models
from ._shell import shell_context
from .record_queries import _watch_if_recording

if t.TYPE_CHECKING:
    from flask.sansio.app import App
    from sqlalchemy import MetaData
    from sqlalchemy.orm import registry

    from ._app import AppState
    from ._engines import AppEngines
    from ._models import DeclarativeLike
    from ._types import AnyEngine

_F = t.TypeVar("_F", bound=t.Callable[..., t.Any])
_Session = t.TypeVar("_Session")


class ScopedBase(t.Generic[_F, _Session]):
    """The shared part of both scoped sessions: set-up, factory, checks, ``init_app``.

    *_F* is the session factory's type, *_Session* the session's. Subclasses call
    :meth:`_setup` from their constructor, after SQLAlchemy's, and implement
    :meth:`close_session`.
    """

    is_async: t.ClassVar[bool]
    name: str
    session_options: dict[str, t.Any]
    #: The metadata of the models in this scoped session's database (``None``: not given).
    #: ``flask db create-all`` and migrations use it.
    metadata: MetaData | None
    #: The registry of its mapped models, when ``metadata=`` was a declarative base class
    #: (the shell offers them).
    models: registry | None
    #: Whether the context's session is committed after a response with status < 400.
    commit_on_success: bool
    #: How many sessions made by ``fresh()`` are open now.
    fresh_open: int
    _session_factory: _F | None
    _fresh_lock: threading.Lock
    #: The engines of the apps this scoped session is initialised on.
    _owners: weakref.WeakSet[AppEngines]

    def _setup(
        self,
        app: App | None,
        name: str,
        session_options: t.Mapping[str, t.Any] | None,
        metadata: MetaData | DeclarativeLike | None,
        commit_on_success: bool = False,
    ) -> None:
        check_factory(self._session_factory, is_async=self.is_async)
        self.name = name
        self.commit_on_success = commit_on_success
        self.metadata, self.models = split_models(metadata)
        self.session_options = dict(session_options or {})
        self._fresh_lock = threading.Lock()
        self.fresh_open = 0
        self._owners = weakref.WeakSet()
        self.registry: ContextRegistry[t.Any] = ContextRegistry(
            self,
            self._create,
            current_app_context,
            functools.partial(check_new_scope, self),
        )
        if app is not None:
            self.init_app(app)

    def _create(self) -> t.Any:
        return session_factory_for(self)()

    @property
    def session_factory(self) -> _F:
        """The factory given to the constructor, or the current app's, made from its config."""
        return t.cast(_F, session_factory_for(self))

    @session_factory.setter
    def session_factory(self, factory: _F | None) -> None:
        self._session_factory = factory

    @property
    def given_factory(self) -> _F | None:
        """The session factory given to the constructor (``None``: made from the config)."""
        return self._session_factory

    def init_app(self, app: App) -> None:
        """Scope sessions to *app*'s contexts and close them when a context is torn down."""
        state = register(app, self)
        if shell_context not in app.shell_context_processors:
            app.shell_context_processor(shell_context)
        self._owners.add(state.engines)
        adopt(self._session_factory, self._owners)
        track_changes(app, self._session_factory)  # the model signals, if the app opted in
        if self.commit_on_success:
            registries = (self.registry,)
            commit_on_success(app, lambda: registries)
        self._init_app(app, state)

    def configure(self, **kwargs: t.Any) -> None:
        """Reconfigure the session factory (``sessionmaker.configure``), in a context or not.

        Engines it is given (``bind=``, ``binds=``) are taken charge of as in
        :meth:`init_app`: a forked worker opens its own connections for them.
        """
        t.cast(t.Any, super()).configure(**kwargs)
        adopt(self._session_factory, self._owners)
        keep_tracking(self._session_factory)

    def _engine(self, app: App | None) -> AnyEngine:
        """What ``get_engine`` returns, typed by each kind (see ``_accessors.engine_of``)."""
        return engine_of(self, app)

    def _init_app(self, app: App, state: AppState) -> None:
        """What a kind of scoped session adds to :meth:`init_app`."""

    @staticmethod
    def _check_access() -> None:
        """Raise if a session may not be used here (sync in async code, a foreign loop).

        Each kind sets its own check from ``_misuse``: one call on every session access.
        """
        raise NotImplementedError

    def __call__(self, **kw: t.Any) -> _Session:
        """The current context's session (made on first use; with *kw*, made with them)."""
        self._check_access()
        return t.cast(_Session, t.cast(t.Any, super()).__call__(**kw))

    @property
    def _proxied(self) -> _Session:
        # What SQLAlchemy's generated proxy methods call: checked on every use.
        self._check_access()
        session: _Session = self.registry()  # no cast(): a call on every access
        return session

    def close_session(self, session: t.Any) -> t.Coroutine[t.Any, t.Any, None] | None:
        """Close *session*: a sync one now (returns ``None``), an async one when awaited."""
        raise NotImplementedError

    def remove(self) -> t.Coroutine[t.Any, t.Any, None] | None:
        """Close and forget the current context's session (async: when awaited)."""
        raise NotImplementedError

    def _open_fresh(self, **kw: t.Any) -> t.Any:
        """A new session for ``fresh()``, after the same checks as the scoped session's."""
        self._check_access()
        session = self.session_factory(**kw)
        ctx = current_app_context()  # as check_new_scope does for the scoped sessions
        state = get_state(ctx.app) if ctx is not None else None
        if ctx is not None and state is not None and self in state.members:
            _watch_if_recording(self, ctx.app, state)
        with self._fresh_lock:
            self.fresh_open += 1
        return session

    def _fresh_closed(self) -> None:
        with self._fresh_lock:
            self.fresh_open -= 1
