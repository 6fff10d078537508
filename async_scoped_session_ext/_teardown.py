"""The shared teardown: pop every session of the ending context, close it, never raise."""

from __future__ import annotations

import asyncio
import logging
import typing as t

from ._runner import runner
from ._scope import current_app_context

if t.TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from ._scope import AppContextLike, ContextRegistry

logger = logging.getLogger("async_scoped_session_ext")


class Removable(t.Protocol):
    """A scoped session as the teardown sees it: ``remove()`` may return an awaitable."""

    @property
    def is_async(self) -> bool: ...

    @property
    def registry(self) -> ContextRegistry[t.Any]: ...

    def remove(self) -> t.Coroutine[t.Any, t.Any, None] | None: ...


def _log_failure(scoped: Removable) -> None:
    logger.exception(
        "Closing the session of %r failed during app-context teardown. The session was"
        " already taken out of the registry; SQLAlchemy invalidates a connection it cannot"
        " return cleanly. The remaining teardown functions still run.",
        scoped,
    )


def _has_changes(session: Session | AsyncSession) -> bool:
    """Whether *session* holds new, changed or deleted objects not flushed yet."""
    sync_session = getattr(session, "sync_session", session)
    is_clean = getattr(sync_session, "_is_clean", None)  # SQLAlchemy's, builds no sets
    if is_clean is not None:
        return not is_clean()
    return bool(session.new or session.dirty or session.deleted)


def _warn_if_uncommitted(scoped: Removable, ctx: AppContextLike, request_failed: bool) -> None:
    """Log a warning when a request that ended normally leaves unflushed changes behind."""
    if request_failed:
        return  # rolling back is what the caller expects
    session: Session | AsyncSession | None = scoped.registry.peek(ctx)
    if session is not None and _has_changes(session):
        logger.warning(
            "The session of %r is torn down with changes that were never committed"
            " (%d new, %d changed, %d deleted objects); they are discarded. Call"
            " commit() before the request ends, or expunge() what you do not mean to save.",
            scoped,
            len(session.new),
            len(session.dirty),
            len(session.deleted),
        )


def flask_teardown(
    scoped_sessions: t.Callable[[], t.Sequence[Removable]],
) -> t.Callable[[BaseException | None], None]:
    """Build the sync teardown registered once on a Flask app.

    An async session is closed on the shared loop it was used on (see ``_runner``); a sync
    app never reaches that branch, so it starts no thread and no event loop.
    """

    def _remove_scoped_sessions(exc: BaseException | None) -> None:
        ctx = current_app_context()  # Flask runs its teardowns in the ending context
        if ctx is None:
            return
        for scoped in scoped_sessions():
            if scoped.is_async and ctx not in scoped.registry.registry:
                continue  # nothing to close: spare the hop to the shared loop
            try:
                _warn_if_uncommitted(scoped, ctx, exc is not None)
                scoped.registry.mark_closing(ctx)
                pending = scoped.remove()
                if pending is not None:
                    runner.run_soon(pending)
            except Exception:
                _log_failure(scoped)

    return _remove_scoped_sessions


def quart_teardown(
    scoped_sessions: t.Callable[[], t.Sequence[Removable]], failed: t.Container[object]
) -> t.Callable[[BaseException | None], t.Awaitable[None]]:
    """Build the async teardown registered once on a Quart app.

    Every session is removed even if the request task is cancelled meanwhile (a client that
    hangs up); the cancellation is re-raised once all are closed.
    """

    async def _remove_scoped_sessions(exc: BaseException | None) -> None:
        cancelled: asyncio.CancelledError | None = None
        ctx = current_app_context()  # Quart runs its teardowns in the ending context
        if ctx is None:
            return
        request_failed = exc is not None or ctx in failed
        for scoped in scoped_sessions():
            try:
                _warn_if_uncommitted(scoped, ctx, request_failed)
                scoped.registry.mark_closing(ctx)
                pending = scoped.remove()
                if pending is not None:
                    await pending
            except asyncio.CancelledError as error:
                cancelled = cancelled or error
            except Exception:
                _log_failure(scoped)
        if cancelled is not None:
            raise cancelled

    return _remove_scoped_sessions


async def close_to_completion(
    session: AsyncSession, timeout: float, busy: asyncio.Task[t.Any] | None = None
) -> None:
    """Close *session*, finishing the close even if the caller is cancelled meanwhile.

    The close runs in its own task, shielded from the caller's cancellation, and bounded by
    *timeout* seconds, after which the session's connections are invalidated instead. If
    another task (*busy*) is still inside an operation on the session, it may finish
    first, within the same bound. A cancellation of the caller is re-raised once the close
    has finished.
    """
    task = asyncio.ensure_future(_bounded_close(session, timeout, busy))
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as error:
            if task.cancelled():
                raise
            cancelled = error
    if cancelled is not None:
        if task.exception() is not None:
            logger.error(
                "Closing %r failed while the request was being cancelled.",
                session,
                exc_info=task.exception(),
            )
        raise cancelled
    task.result()


async def _bounded_close(
    session: AsyncSession, timeout: float, busy: asyncio.Task[t.Any] | None
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if busy is not None:
        await asyncio.wait({busy}, timeout=timeout)
        if not busy.done():
            await _cancel_and_wait(busy)  # SQLAlchemy invalidates a cancelled operation's conn
    if await _close_within(session, deadline - loop.time()):
        return
    logger.warning(
        "Closing %r took longer than %s s (is the database reachable?); its connections"
        " are invalidated instead of being returned to the pool.",
        session,
        timeout,
    )
    await _finish_within(session.invalidate(), _GRACE)


_GRACE = 0.1
"""Seconds a cancelled close may take to finish before it is cancelled again."""


async def _close_within(session: AsyncSession, timeout: float) -> bool:
    """Close *session* in this task within *timeout* seconds; whether the close finished.

    The same bound as :func:`_finish_within`, without a task of its own (this already runs
    in the shielded close task): past the bound this task is cancelled, and once more after
    :data:`_GRACE` if the close is still going.
    """
    task = asyncio.current_task()
    if task is None:  # not in a task: nothing to cancel, use the general helper
        return await _finish_within(session.close(), timeout)
    loop = asyncio.get_running_loop()
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        task.cancel()

    timers = [loop.call_later(max(timeout, 0), expire)]
    timers.append(loop.call_later(max(timeout, 0) + _GRACE, expire))
    try:
        await session.close()
        return not expired  # a close that needed a cancellation counts as timed out
    except asyncio.CancelledError:
        if not expired:
            raise  # cancelled from outside, not by the bound
        return False
    finally:
        for timer in timers:
            timer.cancel()
        for _ in expired:
            task.uncancel()


async def _finish_within(coro: t.Coroutine[t.Any, t.Any, None], timeout: float) -> bool:
    """Run *coro* for at most *timeout* seconds; cancel it after that. Whether it finished.

    A cancelled SQLAlchemy close first tries the driver's graceful close (asyncpg waits up
    to 2 s for it); a second cancellation makes it close the connection at once.
    """
    task = asyncio.ensure_future(coro)
    await asyncio.wait({task}, timeout=max(timeout, 0))
    if task.done():
        task.result()
        return True
    await _cancel_and_wait(task)
    return False


async def _cancel_and_wait(task: asyncio.Task[t.Any]) -> None:
    """Cancel *task*, again after a short grace if it is still running, then let it end."""
    for _ in range(2):
        task.cancel()
        await asyncio.wait({task}, timeout=_GRACE)
        if task.done():
            break
    await asyncio.wait({task}, timeout=1)
    if task.done() and not task.cancelled() and task.exception() is not None:
        logger.debug("A cancelled close ended with an error.", exc_info=task.exception())
