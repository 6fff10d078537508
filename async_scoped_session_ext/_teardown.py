"""The shared teardown: pop every session of the ending context, close it, never raise."""

from __future__ import annotations

import asyncio
import logging
import typing as t

from ._runner import runner

if t.TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.util import ScopedRegistry

logger = logging.getLogger("async_scoped_session_ext")


class Removable(t.Protocol):
    """A scoped session as the teardown sees it: ``remove()`` may return an awaitable."""

    @property
    def is_async(self) -> bool: ...

    @property
    def registry(self) -> ScopedRegistry[t.Any]: ...

    def remove(self) -> t.Coroutine[t.Any, t.Any, None] | None: ...


def _log_failure(scoped: Removable) -> None:
    logger.exception(
        "Closing the session of %r failed during app-context teardown. The session was"
        " already taken out of the registry; SQLAlchemy invalidates a connection it cannot"
        " return cleanly. The remaining teardown functions still run.",
        scoped,
    )


def flask_teardown(
    scoped_sessions: t.Sequence[Removable],
) -> t.Callable[[BaseException | None], None]:
    """Build the sync teardown registered once on a Flask app.

    An async session is closed on the shared loop it was used on (see ``_runner``); a sync
    app never reaches that branch, so it starts no thread and no event loop.
    """

    def _remove_scoped_sessions(exc: BaseException | None) -> None:
        for scoped in scoped_sessions:
            if scoped.is_async and not scoped.registry.has():
                continue  # nothing to close: spare the hop to the shared loop
            try:
                pending = scoped.remove()
                if pending is not None:
                    runner.run_soon(pending)
            except Exception:
                _log_failure(scoped)

    return _remove_scoped_sessions


def quart_teardown(
    scoped_sessions: t.Sequence[Removable],
) -> t.Callable[[BaseException | None], t.Awaitable[None]]:
    """Build the async teardown registered once on a Quart app.

    Every session is removed even if the request task is cancelled meanwhile (a client that
    hangs up); the cancellation is re-raised once all are closed.
    """

    async def _remove_scoped_sessions(exc: BaseException | None) -> None:
        cancelled: asyncio.CancelledError | None = None
        for scoped in scoped_sessions:
            try:
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


async def close_to_completion(session: AsyncSession, timeout: float) -> None:
    """Close *session*, finishing the close even if the caller is cancelled meanwhile.

    The close runs in its own task, shielded from the caller's cancellation, and bounded by
    *timeout* seconds, after which the session's connections are invalidated instead. A
    cancellation of the caller is re-raised once the close has finished.
    """
    task = asyncio.ensure_future(_bounded_close(session, timeout))
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


async def _bounded_close(session: AsyncSession, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await session.close()
    except TimeoutError:
        logger.warning(
            "Closing %r took longer than %s s (is the database reachable?); its connections"
            " are invalidated instead of being returned to the pool.",
            session,
            timeout,
        )
        await session.invalidate()
