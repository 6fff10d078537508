"""What the lower layers know of a scoped session, engine and session factory: protocols only."""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:  # not at run time: a sync-only install cannot import them (no greenlet)
    from sqlalchemy import Engine, MetaData
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
    from sqlalchemy.orm import registry, sessionmaker

AnyEngine: t.TypeAlias = "Engine | AsyncEngine"
AnyFactory: t.TypeAlias = "sessionmaker[t.Any] | async_sessionmaker[t.Any]"


class ScopedLike(t.Protocol):
    """A ``flask_scoped_session`` or ``async_scoped_session``, as the core and the app see it."""

    @property
    def name(self) -> str: ...

    @property
    def is_async(self) -> bool: ...

    @property
    def session_options(self) -> t.Mapping[str, t.Any]: ...

    @property
    def metadata(self) -> MetaData | None: ...

    @property
    def models(self) -> registry | None: ...

    @property
    def given_factory(self) -> t.Callable[..., t.Any] | None:
        """The session factory given to the constructor, or ``None`` (made from config)."""

    def __call__(self, **kw: t.Any) -> t.Any: ...

    def remove(self) -> t.Coroutine[t.Any, t.Any, None] | None:
        """Close and forget the current context's session (async: when awaited)."""

    def close_session(self, session: t.Any) -> t.Coroutine[t.Any, t.Any, None] | None:
        """Close *session*: a sync one now (returns ``None``), an async one when awaited."""
