"""Closing sessions: each to completion (through cancellations, within a time bound), and
all of a context's, never stopping halfway."""

from __future__ import annotations

import asyncio
import logging
import typing as t

if t.TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from ._types import ScopedLike

_T = t.TypeVar("_T")
logger = logging.getLogger("async_scoped_session_ext")

_GRACE = 0.1
"""Seconds a cancelled close may take to finish before it is cancelled again."""


async def complete(future: asyncio.Future[_T]) -> _T:
    """Wait for *future* to finish even if the caller is cancelled meanwhile.

    The future is shielded from the caller's cancellation; a cancellation of the caller is
    re-raised once the future is done (its error, if it has one, is then logged, never
    hidden behind the cancellation).
    """
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError as error:
            if future.cancelled():
                raise
            cancelled = error
        except Exception:
            if cancelled is None:
                raise
            # The future failed after the caller was cancelled: logged below, and the
            # cancellation re-raised, so that the hang-up is not lost.
    if cancelled is not None:
        if future.exception() is not None:
            logger.error(
                "Closing a session failed while the request was being cancelled.",
                exc_info=future.exception(),
            )
        raise cancelled
    return future.result()


def defer_cancellation(cancelled: asyncio.CancelledError) -> None:
    """Deliver *cancelled* at the current task's next suspension instead of raising it now.

    For a framework that would wrap a cancellation raised in its teardown (Quart 0.23):
    the task is cancelled again, with its count of pending cancellations unchanged (so that
    an ``asyncio.timeout()`` around it still turns it into a ``TimeoutError``); a task that
    finishes without suspending again still ends cancelled.
    """
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - a teardown always runs in a task
        raise cancelled
    task.uncancel()
    task.cancel(cancelled.args[0] if cancelled.args else None)


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
    if busy is None and not session.in_transaction():
        # It holds no connection, so its close does no I/O and never suspends: no task to
        # shield it, no timer to bound it.
        await session.close()
        return
    await complete(asyncio.ensure_future(_bounded_close(session, timeout, busy)))


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


async def _close_within(session: AsyncSession, timeout: float) -> bool:
    """Close *session* in this task within *timeout* seconds; whether the close finished.

    The same bound as :func:`_finish_within`, without a task of its own (this runs in the
    shielded close task): past the bound this task is cancelled, and once more after
    :data:`_GRACE` if the close is still going.
    """
    task: asyncio.Task[t.Any] = asyncio.current_task()  # type: ignore[assignment]  # in a task
    loop = asyncio.get_running_loop()
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        task.cancel()
        if len(expired) == 1:  # the second timer only once the first has fired
            timers.append(loop.call_later(_GRACE, expire))

    timers = [loop.call_later(max(timeout, 0), expire)]
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


# -- all the sessions of a context -----------------------------------------------------


def close_sync_then_async(
    taken: list[tuple[ScopedLike, t.Any]],
) -> t.Coroutine[t.Any, t.Any, None] | None:
    """Close the sync sessions now; return a coroutine closing the async ones, if any."""
    later = []
    for scoped, session in taken:
        if scoped.is_async:
            later.append((scoped, session))
            continue
        try:
            scoped.close_session(session)
        except Exception:
            log_failure(scoped)
    return close_all(later) if later else None


async def close_all(taken: list[tuple[ScopedLike, t.Any]]) -> None:
    """Close every session to completion, sync ones in a worker thread (off the loop).

    Never stops halfway: a failing close is logged and the next one runs; a cancellation
    of the caller is re-raised once all are closed.
    """
    cancelled: asyncio.CancelledError | None = None
    for scoped, session in taken:
        try:
            if scoped.is_async:
                await scoped.close_session(session)  # type: ignore[misc]  # a coroutine
            else:  # in a worker thread: a slow close must not hold up the event loop
                closing = asyncio.to_thread(scoped.close_session, session)
                await complete(asyncio.ensure_future(closing))
        except asyncio.CancelledError as error:
            cancelled = cancelled or error
        except Exception:
            log_failure(scoped)
    if cancelled is not None:
        raise cancelled


def log_failure(scoped: ScopedLike) -> None:
    logger.exception(
        "Closing the session of %s failed during app-context teardown. The session was"
        " already taken out of the registry; SQLAlchemy invalidates a connection it cannot"
        " return cleanly. The remaining teardown steps still run.",
        describe_scoped(scoped),
    )


def describe_scoped(scoped: ScopedLike) -> str:
    """*scoped* as the teardown's messages name it: ``the async scoped session 'default'``."""
    return f"the {'async' if scoped.is_async else 'sync'} scoped session {scoped.name!r}"
