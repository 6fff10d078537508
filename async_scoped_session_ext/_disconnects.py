"""asyncpg's ``InternalClientError`` counts as a lost connection, on every SQLAlchemy.

A connection the server cuts (a restart, a standby that stops, ``pg_terminate_backend``)
can leave asyncpg's protocol waiting for the end of an error that never comes; its next
use raises ``InternalClientError: cannot switch to state 15; another operation (2) is in
progress``. SQLAlchemy before 2.0.50 passes that error on unwrapped and sees no disconnect
in it (sqlalchemy#13241): the failed rollback leaves the connection checked out until the
garbage collector terminates it, and the pool's pre-ping lets the error through to the
caller. A ``handle_error`` listener (a documented SQLAlchemy event) on each async engine the
library takes charge of marks it a disconnect, so that SQLAlchemy invalidates the
connection, and the pool's older ones, as 2.0.50 does; :func:`protocol_errors` names the
error for the callers that must catch it from a pool checkout (the replicas' routing).
"""

from __future__ import annotations

import sys
import typing as t

from sqlalchemy import event

if t.TYPE_CHECKING:
    from sqlalchemy.engine import ExceptionContext

    from ._sa_asyncio import AsyncEngine


def protocol_errors() -> tuple[type[BaseException], ...]:
    """The driver errors that say a connection's protocol state is broken (for ``except``).

    asyncpg's ``InternalClientError``, when asyncpg is loaded. SQLAlchemy 2.0.50 and later
    wrap it in a DBAPI error (see :func:`broken_protocol`), older ones raise it as it is.
    """
    asyncpg = sys.modules.get("asyncpg")
    return () if asyncpg is None else (asyncpg.InternalClientError,)


def broken_protocol(error: BaseException) -> bool:
    """Whether *error* is one of :func:`protocol_errors`, or was raised from one."""
    kinds = protocol_errors()
    cause: BaseException | None = error
    while kinds and cause is not None:
        if isinstance(cause, kinds):
            return True
        cause = cause.__cause__
    return False


def count_as_disconnects(engine: AsyncEngine) -> None:
    """Invalidate *engine*'s connections that fail with a protocol error; once per engine.

    Needed before SQLAlchemy 2.0.50 only (later versions see the disconnect themselves);
    the pool's pre-ping calls no ``handle_error`` there for it, see ``_replica_routing``.
    """
    core = engine.sync_engine
    if core.dialect.driver == "asyncpg" and not event.contains(core, "handle_error", _mark):
        event.listen(core, "handle_error", _mark)


def _mark(context: ExceptionContext) -> None:
    if broken_protocol(context.original_exception):
        context.is_disconnect = True
