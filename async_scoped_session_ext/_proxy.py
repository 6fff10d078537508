"""``current_session``: one proxy to the current app's scoped session, sync or async."""

from __future__ import annotations

import typing as t

from ._current import async_proxy, current_scoped_session, current_state, session_proxy, sync_proxy

if t.TYPE_CHECKING:
    from sqlalchemy import Executable
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session
    from sqlalchemy.orm.identity import IdentityMap
    from sqlalchemy.orm.interfaces import ORMOption
    from sqlalchemy.util import IdentitySet

    from ._async import async_scoped_session
    from ._sync import flask_scoped_session

    AnyScopedSession: t.TypeAlias = flask_scoped_session[t.Any] | async_scoped_session[t.Any]

_Params: t.TypeAlias = t.Mapping[str, t.Any] | t.Sequence[t.Mapping[str, t.Any]]


class _RunStatement(t.Protocol):
    """``execute()`` and ``scalars()``: a result in sync code, an awaitable in async code."""

    def __call__(
        self,
        statement: Executable,
        params: _Params | None = None,
        *,
        execution_options: t.Mapping[str, t.Any] = ...,
        bind_arguments: dict[str, t.Any] | None = None,
    ) -> t.Any: ...


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
    @property
    def execute(self) -> _RunStatement:
        """``execute(statement, params=None, *, execution_options=..., bind_arguments=None)``."""

    def scalar(
        self,
        statement: Executable,
        params: t.Mapping[str, t.Any] | None = None,
        *,
        execution_options: t.Mapping[str, t.Any] = ...,
        bind_arguments: dict[str, t.Any] | None = None,
    ) -> t.Any: ...
    @property
    def scalars(self) -> _RunStatement:
        """``scalars(statement, params=None, *, execution_options=..., bind_arguments=None)``."""

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


def get_scoped_session(name: str = "default") -> AnyScopedSession:
    """The current app's scoped session called *name* (the ``name=`` it was created with).

    Like :data:`current_session`, the async one is picked when an event loop is running in
    the thread and the app has both kinds under that name. ``get_scoped_session()`` is the
    default session itself.

    :raises KeyError: when the app has no scoped session of that name.
    """
    state = current_state()
    if name == "default":
        return t.cast("AnyScopedSession", current_scoped_session())
    scoped = state.session_named(name)
    if scoped is None:
        known = sorted({s.name for s in state.named_scoped()})
        raise KeyError(
            f"The current app has no scoped session named {name!r}; it has {known!r}."
            f" Create one with flask_scoped_session(name={name!r}) or"
            f" async_scoped_session(name={name!r}) and call 'init_app(app)' on it."
        )
    return t.cast("AnyScopedSession", scoped)


current_session: CurrentSession = t.cast(CurrentSession, session_proxy)
"""The current app's scoped session, resolved on every access.

``await current_session.execute(...)`` in Quart and async views, ``current_session.query(...)``
in sync Flask. ``current_session._get_current_object()`` is the scoped session itself and
calling ``current_session()`` returns the context's session.
"""


current_sync_session: flask_scoped_session[Session] = t.cast(
    "flask_scoped_session[Session]", sync_proxy
)
"""The current app's default :class:`flask_scoped_session`, exactly typed.

The typed view of :data:`current_session` for sync code: ``current_sync_session.get(User,
1)`` is a ``User | None`` to a type checker, where ``current_session.get(...)`` is ``Any``.
Resolved on every access, like :data:`current_session`.
"""

current_async_session: async_scoped_session[AsyncSession] = t.cast(
    "async_scoped_session[AsyncSession]", async_proxy
)
"""The current app's default :class:`async_scoped_session`, exactly typed.

The typed view of :data:`current_session` for async code: ``await
current_async_session.get(User, 1)`` is a ``User | None`` to a type checker.
"""
