"""The one teardown step, for both frameworks: mark the context, warn, remove, take.

The adapters (``_frameworks``) call :func:`end_context` and :func:`remove_then_take` from
their teardown, then close what is left (``_close``): Flask's sync teardown closes sync
sessions at once and hands the async ones to the shared loop, Quart's awaits them all.
"""

from __future__ import annotations

import typing as t

from ._close import describe_scoped, log_failure, logger
from ._context import ContextRecord, ensure_record, mark_torn_down
from ._origin import describe

if t.TYPE_CHECKING:
    from ._context import AppContextLike
    from ._types import ScopedLike


def end_context(ctx: AppContextLike, *, failed: bool) -> ContextRecord:
    """Mark *ctx* torn down and warn of changes never committed; return its record.

    From now on the context refuses new sessions, unless it is pushed again where it was
    torn down. The caller then closes the sessions: :func:`remove_then_take`, then
    ``close_sync_then_async`` (Flask's sync teardown) or ``close_all`` (Quart's), from
    ``_close``.
    """
    record = ensure_record(ctx)  # also for a context without sessions: it must refuse them
    mark_torn_down(record, ctx)
    if not (failed or record.failed):  # after a failure, rolling back is what one expects
        for registry, session in list(record.sessions.items()):
            if has_changes(session):
                _warn_uncommitted(ctx, registry.owner, session)
    return record


def remove_then_take(
    record: ContextRecord, removers: t.Iterable[ScopedLike]
) -> list[tuple[ScopedLike, t.Any]]:
    """Call ``remove()`` of each sync scoped session in *removers*, then take what is left.

    Each app-context teardown calls ``remove()`` once, as Flask-SQLAlchemy-Session did (a
    subclass may extend it); it runs in the ending context, so it finds that context's
    session. Sessions not removed that way (those of async scoped sessions) are returned.
    """
    for scoped in removers:
        try:
            scoped.remove()
        except Exception:
            log_failure(scoped)
    return record.take()


def has_changes(session: t.Any) -> bool:
    """Whether *session* (sync or async) holds new, changed or deleted objects not flushed."""
    # Looked up where they are (no failed attribute lookup: this runs at every teardown).
    sync_session = vars(session).get("sync_session", session)  # an AsyncSession's
    is_clean = getattr(type(sync_session), "_is_clean", None)  # SQLAlchemy's, builds no sets
    if is_clean is not None:
        return not is_clean(sync_session)
    return bool(session.new or session.dirty or session.deleted)


def _warn_uncommitted(ctx: AppContextLike, scoped: ScopedLike, session: t.Any) -> None:
    logger.warning(
        "The session of %s, in %s, is torn down with changes that were never committed"
        " (%d new, %d changed, %d deleted objects); they are discarded. Call commit()"
        " before it ends, or expunge() what you do not mean to save.",
        describe_scoped(scoped),
        describe(ctx),
        len(session.new),
        len(session.dirty),
        len(session.deleted),
    )
