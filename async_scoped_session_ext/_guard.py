"""Detect concurrent use of one AsyncSession by several tasks of the same app context.

Child tasks (``asyncio.gather``, ``asyncio.create_task``) inherit the app context and so get
the request's session. An ``AsyncSession`` must not be used concurrently: SQLAlchemy raises
obscure state errors, and the connection can be left checked out. The scoped session's
awaitable methods therefore claim the session for the awaiting task while they run.
"""

from __future__ import annotations

import asyncio
import typing as t

from sqlalchemy.ext.asyncio import async_scoped_session

if t.TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

_AWAITABLE_METHODS = (
    "aclose",
    "close",
    "commit",
    "connection",
    "delete",
    "delete_all",
    "execute",
    "flush",
    "get",
    "get_one",
    "invalidate",
    "merge",
    "merge_all",
    "refresh",
    "reset",
    "rollback",
    "scalar",
    "scalars",
    "stream",
    "stream_scalars",
)
#: The awaitable methods ``async_scoped_session`` proxies to its ``AsyncSession``, as far
#: as the installed SQLAlchemy has them (``aclose`` is new in 2.0.20, ``get_one`` and
#: ``reset`` in 2.0.22, ``delete_all`` and ``merge_all`` in 2.1).
GUARDED_METHODS = tuple(name for name in _AWAITABLE_METHODS if hasattr(async_scoped_session, name))

_CONCURRENT_USE = (
    "This AsyncSession is already in use by another task ({owner!r}) of the same app"
    " context. Tasks started with asyncio.gather() or asyncio.create_task() inside a request"
    " share the request's session, and an AsyncSession must not be used concurrently. Give"
    " each concurrent task its own session, closed when it is done:"
    " 'async with scoped.fresh() as session: ...' (where scoped is your"
    " async_scoped_session), or await the tasks one after another."
)


_OWNER = "_async_scoped_session_ext_owner"
"""The attribute of an ``AsyncSession`` naming the task inside an operation on it."""


def busy_elsewhere(session: AsyncSession) -> asyncio.Task[t.Any] | None:
    """The other, still running task that is inside an operation on *session*, if any.

    The claim is an attribute of the session itself: it is set and cleared around every
    awaited operation, so it must cost next to nothing (read from the instance dictionary:
    no failed attribute lookup before the first claim).
    """
    owner: asyncio.Task[t.Any] | None = vars(session).get(_OWNER)
    if owner is None or owner.done() or owner is asyncio.current_task():
        return None
    return owner


def guarded(name: str) -> t.Callable[..., t.Awaitable[t.Any]]:
    """A scoped-session method that awaits ``AsyncSession.<name>`` with the session claimed
    by the awaiting task, refusing another task's concurrent use."""

    async def method(self: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        session = self._proxied
        task = asyncio.current_task()
        claims = vars(session)
        owner = claims.get(_OWNER)
        if owner is task or task is None:  # re-entrant, or not in a task: nothing to claim
            return await getattr(session, name)(*args, **kwargs)
        if owner is not None and not owner.done():
            raise RuntimeError(_CONCURRENT_USE.format(owner=owner))
        claims[_OWNER] = task
        try:
            return await getattr(session, name)(*args, **kwargs)
        finally:
            if claims.get(_OWNER) is task:
                claims[_OWNER] = None

    method.__name__ = method.__qualname__ = name
    return method
