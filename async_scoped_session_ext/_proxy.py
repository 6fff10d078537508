"""``current_session``: one proxy to the current app's scoped session, sync or async."""

from __future__ import annotations

import typing as t

from werkzeug.local import LocalProxy

from ._app import EXTENSION_KEY, AppState, get_state
from ._scope import NO_APP_CONTEXT_MESSAGE, current_app_context

if t.TYPE_CHECKING:
    from sqlalchemy import Executable
    from sqlalchemy.orm.identity import IdentityMap
    from sqlalchemy.orm.interfaces import ORMOption
    from sqlalchemy.util import IdentitySet

    from ._async import async_scoped_session
    from ._sync import flask_scoped_session

    AnyScopedSession: t.TypeAlias = flask_scoped_session[t.Any] | async_scoped_session[t.Any]

_Params: t.TypeAlias = t.Mapping[str, t.Any] | t.Sequence[t.Mapping[str, t.Any]]


class SessionSurface(t.Protocol):
    """What ``flask_scoped_session`` and ``async_scoped_session`` share, typed for both.

    Methods that never do I/O have the same signature and result in both modes. A method
    that does I/O returns its result in a sync app and an awaitable of it in an async one,
    which only the running code knows: its arguments are checked, its result is ``Any``.
    ``typing_tests/`` checks that both scoped session classes match this protocol.
    """

    def add(self, instance: object, *, _warn: bool = True) -> None: ...
    def add_all(self, instances: t.Iterable[object]) -> None: ...
    def expire(self, instance: object, attribute_names: t.Iterable[str] | None = None) -> None: ...
    def expire_all(self) -> None: ...
    def expunge(self, instance: object) -> None: ...
    def expunge_all(self) -> None: ...
    def is_modified(self, instance: object, include_collections: bool = True) -> bool: ...
    @property
    def new(self) -> IdentitySet: ...
    @property
    def dirty(self) -> IdentitySet: ...
    @property
    def deleted(self) -> IdentitySet: ...
    @property
    def identity_map(self) -> IdentityMap: ...
    @property
    def info(self) -> dict[t.Any, t.Any]: ...
    @property
    def is_active(self) -> bool: ...
    @property
    def no_autoflush(self) -> t.Any: ...

    # I/O: a result in sync code, an awaitable in async code.
    def execute(
        self,
        statement: Executable,
        params: _Params | None = None,
        *,
        execution_options: t.Mapping[str, t.Any] = ...,
        bind_arguments: dict[str, t.Any] | None = None,
    ) -> t.Any: ...
    def scalar(
        self,
        statement: Executable,
        params: t.Mapping[str, t.Any] | None = None,
        *,
        execution_options: t.Mapping[str, t.Any] = ...,
        bind_arguments: dict[str, t.Any] | None = None,
    ) -> t.Any: ...
    def scalars(
        self,
        statement: Executable,
        params: _Params | None = None,
        *,
        execution_options: t.Mapping[str, t.Any] = ...,
        bind_arguments: dict[str, t.Any] | None = None,
    ) -> t.Any: ...
    def get(
        self,
        entity: type[t.Any],
        ident: t.Any,
        *,
        options: t.Sequence[ORMOption] | None = None,
        populate_existing: bool = ...,
        execution_options: t.Mapping[str, t.Any] = ...,
    ) -> t.Any: ...
    def refresh(
        self, instance: object, attribute_names: t.Iterable[str] | None = None
    ) -> t.Any: ...
    def delete(self, instance: object) -> t.Any: ...
    def flush(self, objects: t.Sequence[t.Any] | None = None) -> t.Any: ...
    def commit(self) -> t.Any: ...
    def rollback(self) -> t.Any: ...
    def close(self) -> t.Any: ...


class CurrentSession(SessionSurface, t.Protocol):
    """The type of :data:`current_session`: a scoped session, sync or async, resolved late.

    Calling it returns the context's ``Session`` or ``AsyncSession``, and any attribute not
    in :class:`SessionSurface` is looked up on the scoped session at run time: both are
    ``Any``, so annotate what the code knows (``session: AsyncSession = current_session()``)
    or use the scoped session object itself, whose types are exact.
    """

    def _get_current_object(self) -> AnyScopedSession: ...
    def __call__(self, **kw: t.Any) -> t.Any: ...
    def __getattr__(self, name: str) -> t.Any: ...


def _current_state() -> AppState:
    ctx = current_app_context()
    if ctx is None:
        raise RuntimeError(NO_APP_CONTEXT_MESSAGE)
    app = ctx.app
    state = get_state(app)
    if state is None:
        raise AttributeError(
            f"{app!r} has no 'scoped_session' attribute: no scoped session was initialised"
            " on this app. Create one with flask_scoped_session(session_factory, app) or"
            " async_scoped_session(session_factory, app), or call 'init_app(app)' on it in"
            " your app factory."
        )
    return state


def _current_scoped_session() -> AnyScopedSession:
    # The hot path of every ``current_session.<attr>``: one context lookup, one dict lookup.
    ctx = current_app_context()
    if ctx is not None:
        state: AppState | None = ctx.app.extensions.get(EXTENSION_KEY)
        if state is not None:
            scoped = state.default_session()
            if scoped is not None:
                return scoped
    _current_state()  # raises the error that says what is missing, if something is
    raise AttributeError(
        "The current app has no default scoped session: its only scoped sessions belong"
        " to an EngineRegistry, and current_session never stands for one of them. Use"
        " 'registry[key]' for a key's session, or create a flask_scoped_session or"
        " async_scoped_session for the app's own database."
    )


class _SessionProxy(LocalProxy):  # type: ignore[type-arg]
    """werkzeug's ``LocalProxy``, with a direct path for public attributes and calls.

    ``LocalProxy`` reaches a session attribute through ``__getattr__``, which Python calls
    only after normal lookup has failed and raised an ``AttributeError``, and then builds a
    bound lookup object: about a microsecond per ``current_session.execute``. Public names
    go straight to the scoped session here. Names starting with ``_`` (the proxy's own
    ``_get_current_object``, ``__class__``, ...) keep ``LocalProxy``'s behaviour.
    """

    __slots__ = ()

    def __getattribute__(self, name: str) -> t.Any:
        if name[0] == "_":
            return object.__getattribute__(self, name)
        return getattr(_current_scoped_session(), name)

    def __getattr__(self, name: str) -> t.Any:
        # A private name the proxy itself lacks: the scoped session's, as in LocalProxy.
        return getattr(_current_scoped_session(), name)

    def __call__(self, **kw: t.Any) -> t.Any:
        return _current_scoped_session()(**kw)


def get_scoped_session(name: str = "default") -> AnyScopedSession:
    """The current app's scoped session called *name* (the ``name=`` it was created with).

    Like :data:`current_session`, the async one is picked when an event loop is running in
    the thread and the app has both kinds under that name. ``get_scoped_session()`` is the
    default session itself.

    :raises KeyError: when the app has no scoped session of that name.
    """
    state = _current_state()
    if name == "default":
        return _current_scoped_session()
    scoped = state.session_named(name)
    if scoped is None:
        known = sorted({s.name for s in state.named_scoped()})
        raise KeyError(
            f"The current app has no scoped session named {name!r}; it has {known!r}."
            f" Create one with flask_scoped_session(name={name!r}) or"
            f" async_scoped_session(name={name!r}) and call 'init_app(app)' on it."
        )
    return scoped


current_session: CurrentSession = t.cast(CurrentSession, _SessionProxy(_current_scoped_session))
"""The current app's scoped session, resolved on every access.

``await current_session.execute(...)`` in Quart and async views, ``current_session.query(...)``
in sync Flask. ``current_session._get_current_object()`` is the scoped session itself and
calling ``current_session()`` returns the context's session.
"""
