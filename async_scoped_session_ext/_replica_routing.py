"""Where a ``ReplicaSession``'s statement goes: which statements are plain reads, and which
replica a transaction reads from (the healthy ones in random order, each connected to and,
with ``max_lag``, its lag checked; see ``_replica_health``).
"""

from __future__ import annotations

import random
import time
import typing as t

from sqlalchemy import CompoundSelect, Connection, Engine, Select
from sqlalchemy.exc import InterfaceError, OperationalError

from ._disconnects import broken_protocol
from ._replica_health import health_of, unreachable
from ._sticky import USE_PRIMARY

if t.TYPE_CHECKING:
    from sqlalchemy.sql.elements import ClauseElement

    from .replicas import ReplicaSession

NO_PRIMARY = (
    "ReplicaSession has no 'bind', so it does not know which of its databases the replica"
    " replicates, and would send no read to the replica. Bind it to that database, beside"
    " any 'binds': sessionmaker(primary_engine, class_=ReplicaSession, binds=...,"
    " replica=replica_engine), or replica_sessionmaker(primary_engine, replica_engine,"
    " binds=...)."
)

NO_REPLICA = (
    "ReplicaSession was given an empty sequence of replicas (replica=[]): it would have"
    " nowhere to send its reads. Give it at least one replica engine, or use a plain"
    " sessionmaker when there is no replica."
)


def plain_read(clause: ClauseElement | None) -> bool:
    """Whether *clause* is a ``SELECT`` (or a compound of them) that locks nothing."""
    if not isinstance(clause, Select | CompoundSelect):
        return False
    return getattr(clause, "_for_update_arg", None) is None  # FOR UPDATE locks: primary


def forced(clause: ClauseElement | None) -> bool:
    """Whether *clause* asks for the primary with ``execution_options(use_primary=True)``."""
    options = getattr(clause, "get_execution_options", None)
    return bool(options is not None and options().get(USE_PRIMARY))


def choose_replica(
    session: ReplicaSession, replicas: t.Sequence[Engine | Connection]
) -> tuple[Engine | Connection | None, Connection | None]:
    """A replica for *session*'s transaction to read from, and its connection to it.

    The healthy ones are tried in random order (so reads spread over them): the first
    that connects and, with ``max_lag``, lags little enough. ``(None, None)``: none would
    do, the transaction reads from the primary.
    """
    candidates = list(replicas)
    random.shuffle(candidates)
    for replica in candidates:
        if isinstance(replica, Connection):  # in tests: the primary's connection
            return replica, None
        connection = _connect(session, replica)
        if connection is not None:
            return replica, connection
    return None, None


def _connect(session: ReplicaSession, replica: Engine) -> Connection | None:
    """*session*'s connection to *replica*, or ``None`` if it is down or lags too much."""
    health = health_of(replica)
    attempt = health.may_try(time.monotonic(), session.backoff)
    if attempt == "skip":
        return None
    try:
        connection = _checkout(session, replica)
        if attempt == "probe":
            health.mark_up()
        max_lag = session.max_lag
        if max_lag is None or health.lag_within(connection, max_lag, session.lag_check_interval):
            return connection
    except unreachable() as error:
        health.mark_down(error, session.backoff)
    return None


#: Pooled connections found broken that one checkout passes over before it gives up.
STALE_CHECKOUTS = 8


def _checkout(session: ReplicaSession, replica: Engine) -> Connection:
    """*session*'s connection to *replica*, passing over pooled ones found broken.

    SQLAlchemy before 2.0.50 lets asyncpg's ``InternalClientError`` out of the pool's
    pre-ping, from a pooled connection whose backend ended, after dropping that connection
    (later versions reconnect: ``_disconnects``). The next pooled connection, or a new
    one, is tried instead: only a connection that cannot be made says the replica is down.
    """
    for _ in range(STALE_CHECKOUTS):
        try:
            return session.connection(bind_arguments={"bind": replica})
        except Exception as error:
            if not broken_protocol(error):
                raise
    return session.connection(bind_arguments={"bind": replica})


def lost(error: BaseException) -> bool:
    """Whether *error* says the connection to the server was lost (not a query's fault)."""
    if isinstance(error, OperationalError | InterfaceError | OSError) or broken_protocol(error):
        return True
    return bool(getattr(error, "connection_invalidated", False))
