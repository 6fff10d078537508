"""Read replicas: plain reads go to a replica engine, everything else to the primary.

SQLAlchemy's ``Session.get_bind()`` pattern ("Custom Vertical Partitioning" in its docs)::

    factory = replica_sessionmaker(primary_engine, replica_engine)
    session = flask_scoped_session(factory, app)

    factory = async_replica_sessionmaker(primary_async_engine, replica_async_engine)
    session = async_scoped_session(factory, app)

A session sends a ``SELECT`` to the replica until it writes: flushes, ``INSERT``,
``UPDATE``, ``DELETE``, ``SELECT ... FOR UPDATE``, textual SQL and anything else that is not a
plain ``SELECT`` go to the primary and count as writes, and once a session has written, all
its statements go to the primary until it is closed or reset (so a request reads its own
writes, including the reloading of objects expired by ``commit()``). Only statements bound
to the primary are routed: with ``binds`` (``replica_sessionmaker(primary, replica,
binds={OtherBase: other_engine})``), a model bound to another database is read from and
written to that database, as SQLAlchemy alone would, and its writes do not count. To read
from the primary before writing::

    select(User).execution_options(use_primary=True)  # one statement
    session.info["use_primary"] = True                  # the rest of the session's life

Several replicas (``replica=[a, b]``) share the reads. A replica that fails is skipped,
in the same statement, for another or the primary, and for ``backoff`` seconds by the
whole process (``_replica_health``); ``max_lag`` skips a lagging one. For a client's own
writes across requests, see :class:`StickyPrimary`.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, sessionmaker

from ._replica_health import health_of, unreachable
from ._replica_routing import NO_PRIMARY, NO_REPLICA, choose_replica, forced, lost, plain_read
from ._sa_asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from ._sticky import USE_PRIMARY, StickyPrimary

if t.TYPE_CHECKING:
    from sqlalchemy.sql.elements import ClauseElement

__all__ = [
    "ReplicaSession",
    "StickyPrimary",
    "async_replica_sessionmaker",
    "replica_sessionmaker",
]

#: Seconds a replica that could not be reached is skipped before it is tried again.
DEFAULT_BACKOFF = 5.0
#: Seconds between two measurements of a replica's lag (with ``max_lag``).
DEFAULT_LAG_CHECK_INTERVAL = 1.0


class ReplicaSession(Session):
    """A :class:`~sqlalchemy.orm.Session` that reads from *replica* until it writes.

    *The primary* is the session's ``bind``: the database that *replica* replicates. A
    session with ``binds`` must have a ``bind`` too, the primary (``binds`` entries may
    name it as well); ``replica_sessionmaker(primary, replica, binds=...)`` gives both.

    Each statement's bind is first resolved as plain SQLAlchemy resolves it
    (:meth:`~sqlalchemy.orm.Session.get_bind`: ``binds`` by mapper, mapped class, base
    class or ``Table``, then ``bind``). A statement whose bind is not the primary (not the
    same engine, nor a connection of it) goes to that bind, and never counts as a write.
    A statement bound to the primary is routed: a plain ``SELECT`` goes to *replica*,
    unless the statement has the execution option ``use_primary=True``,
    ``session.info["use_primary"]`` is true, or the session has written to the primary
    since it was last closed or reset. Everything else (flushes, DML, locking reads,
    textual SQL, ``connection()``) goes to the primary and counts as a write.
    ``close()``, ``reset()`` and ``invalidate()`` (and the ``AsyncSession`` methods that
    call them) end the session's writes: its next plain reads go to *replica* again.

    Each transaction picks its replica on its first read, and connects to it then. When
    that fails (a connection error or timeout), the read goes to another healthy
    replica, or to the primary, in the same statement, and every session of the process
    skips that replica for *backoff* seconds; then one session tries it again. A read
    that fails on a replica connection the transaction holds rolls the transaction back
    (it wrote nothing) and runs again on the primary, unless the session has unflushed
    changes. With *max_lag*, a replica whose lag (``pg_last_xact_replay_timestamp()``,
    PostgreSQL) exceeds it is skipped likewise.

    :param replica: the replica's engine (a sync :class:`~sqlalchemy.engine.Engine`), or
        a sequence of them: each transaction reads from one of the healthy ones, at random.
    :param backoff: seconds an unreachable replica is skipped before it is tried again.
    :param max_lag: the most replication lag, in seconds, a replica may have to be read
        from; ``None`` (the default) does not measure it.
    :param lag_check_interval: seconds between two measurements of a replica's lag.
    """

    def __init__(
        self,
        *args: t.Any,
        replica: Engine | Connection | cabc.Sequence[Engine],
        backoff: float = DEFAULT_BACKOFF,
        max_lag: float | None = None,
        lag_check_interval: float = DEFAULT_LAG_CHECK_INTERVAL,
        **kw: t.Any,
    ) -> None:
        super().__init__(*args, **kw)
        replicas = tuple(replica) if isinstance(replica, cabc.Sequence) else (replica,)
        if not replicas:
            raise TypeError(NO_REPLICA)
        #: The replicas (engines; a connection in tests), in the order given.
        self.replicas: tuple[Engine | Connection, ...] = replicas
        #: The first replica (the only one, unless a sequence was given).
        self.replica: Engine | Connection = replicas[0]
        self.backoff = backoff
        self.max_lag = max_lag
        self.lag_check_interval = lag_check_interval
        #: Whether the session has used the primary for anything but a forced read; then
        #: everything bound to the primary goes to the primary until the session is closed,
        #: reset or invalidated.
        self.wrote: bool = False
        #: Whether the current transaction wrote (DML, a flush, textual SQL): a commit
        #: then sets :attr:`committed_write`.
        self.writing: bool = False
        #: Whether the session has committed a write since it was made (the sticky
        #: primary's cookie is set on such a response).
        self.committed_write: bool = False
        #: Where the current transaction reads: a replica, or ``None`` (the primary: no
        #: replica would do); chosen on its first read (``_read_transaction``).
        self._reading: Engine | Connection | None = None
        self._read_transaction: object = None
        #: The session's connection to ``_reading``, and whether the statement being
        #: executed was sent to it (a failure then retries it on the primary).
        self._replica_connection: Connection | None = None
        self._sent_to_replica = self._primary_next = False
        if self.bind is None and kw.get("binds"):
            raise TypeError(NO_PRIMARY)

    def get_bind(
        self, mapper: t.Any = None, *, clause: ClauseElement | None = None, **kw: t.Any
    ) -> Engine | Connection:
        """The replica for a plain read of the primary; otherwise the usual bind."""
        bind = super().get_bind(mapper, clause=clause, **kw)
        if self.bind is None:  # binds added after the session was made, or bind= given
            raise TypeError(NO_PRIMARY)
        if bind.engine is not self.bind.engine:
            return bind  # another database: as plain SQLAlchemy routes it
        if self._reads_from_replica(clause):
            replica = self._replica()
            return bind if replica is None else replica
        if not forced(clause):
            self.wrote = True
            self.writing = self.writing or not plain_read(clause) or self._flushing
        return bind

    def _replica(self) -> Engine | Connection | None:
        """The replica the transaction reads from (chosen on its first read), or ``None``."""
        transaction = self.get_transaction()
        if transaction is None or transaction is not self._read_transaction:
            if self._primary_next:  # the transaction after a failed replica read
                self._reading = self._replica_connection = None
            else:
                self._reading, self._replica_connection = choose_replica(self, self.replicas)
            self._read_transaction = self.get_transaction()
            self._primary_next = self._primary_next and self._read_transaction is None
        self._sent_to_replica = self._reading is not None
        return self._reading

    # A read the replica fails (it went away mid-statement, or cancelled it for a conflict
    # with recovery) runs again on the primary. AsyncSession, get() and lazy loads call these.

    def execute(self, *args: t.Any, **kw: t.Any) -> t.Any:
        """Execute a statement (:meth:`Session.execute`); a failed replica read retries on
        the primary."""
        return self._with_failover(super().execute, *args, **kw)

    def scalar(self, *args: t.Any, **kw: t.Any) -> t.Any:
        """:meth:`Session.scalar`; a failed replica read retries on the primary."""
        return self._with_failover(super().scalar, *args, **kw)

    def scalars(self, *args: t.Any, **kw: t.Any) -> t.Any:
        """:meth:`Session.scalars`; a failed replica read retries on the primary."""
        return self._with_failover(super().scalars, *args, **kw)

    def _with_failover(self, call: t.Callable[..., t.Any], *args: t.Any, **kw: t.Any) -> t.Any:
        self._sent_to_replica = False
        try:
            return call(*args, **kw)
        except unreachable() as error:
            replica = self._reading
            if not self._sent_to_replica or not isinstance(replica, Engine):
                raise
            if not self._fail_over(replica, error):
                raise
        return call(*args, **kw)

    def _fail_over(self, replica: Engine, error: BaseException) -> bool:
        """Roll back the transaction that failed on *replica*, for a retry on the primary.

        Only a transaction that has nothing to lose: it wrote nothing (its reads would have
        gone to the primary) and has no unflushed changes. Its objects are expired, and
        reload from the primary. Whether it could.
        """
        if self.new or self.dirty or self.deleted:
            return False
        connection = self._replica_connection
        if connection is None or connection.invalidated or lost(error):
            health_of(replica).mark_down(error, self.backoff)
        if connection is not None and not connection.invalidated:
            # Never handed back to the pool as it is: asyncpg 0.29 leaves a connection cut
            # mid-query "in another operation", and its rollback then fails (2 connections
            # stayed checked out in compat(oldest)). Invalidated, the rollback skips it.
            connection.invalidate(error)
        # SQLAlchemy would commit the dead connection's transaction with the session's:
        # end them both now. A rollback skips a connection that was invalidated.
        self.rollback()
        self._primary_next = True
        return True

    def _reads_from_replica(self, clause: ClauseElement | None) -> bool:
        if self.wrote or self._flushing or self.info.get(USE_PRIMARY):
            return False
        return plain_read(clause) and not forced(clause)

    def _end_writes(self) -> None:
        self.wrote = self.writing = self._primary_next = False
        self._reading = self._replica_connection = self._read_transaction = None

    # Session.close(), reset() and invalidate() share a private _close_impl(); the public
    # methods are overridden instead, each one ending the session's writes.

    def close(self) -> None:
        """Close the session; its next statements read from the replica again."""
        try:
            super().close()
        finally:
            self._end_writes()

    def reset(self) -> None:
        """Reset the session (SQLAlchemy 2.0.22+); its next statements read from the replica."""
        try:
            super().reset()
        finally:
            self._end_writes()

    def invalidate(self) -> None:
        """Close the session, invalidating its connections; reads go to the replica again."""
        try:
            super().invalidate()
        finally:
            self._end_writes()


@event.listens_for(ReplicaSession, "after_commit")
def _after_commit(session: Session) -> None:
    if isinstance(session, ReplicaSession) and session.writing:
        session.committed_write = True
        session.writing = False


@event.listens_for(ReplicaSession, "after_rollback")
def _after_rollback(session: Session) -> None:
    if isinstance(session, ReplicaSession):
        session.writing = False


def replica_sessionmaker(
    primary: Engine, replica: Engine | cabc.Sequence[Engine], **kw: t.Any
) -> sessionmaker[ReplicaSession]:
    """A ``sessionmaker`` of :class:`ReplicaSession` bound to *primary*, reading from *replica*.

    *replica* is one engine or a sequence of them. Keyword arguments go to
    :class:`~sqlalchemy.orm.sessionmaker`, and from it to :class:`ReplicaSession`
    (``backoff=``, ``max_lag=``, ``lag_check_interval=``).
    """
    return sessionmaker(primary, class_=ReplicaSession, replica=replica, **kw)


def async_replica_sessionmaker(
    primary: AsyncEngine, replica: AsyncEngine | cabc.Sequence[AsyncEngine], **kw: t.Any
) -> async_sessionmaker[AsyncSession]:
    """An ``async_sessionmaker`` whose sessions wrap a :class:`ReplicaSession`.

    ``get_bind()`` runs on the wrapped sync session, so it is given the engines'
    ``sync_engine`` (its connection to a replica, and the failover, run in the same
    greenlet as the statement). Keyword arguments go to
    :class:`~sqlalchemy.ext.asyncio.async_sessionmaker`, and from it to
    :class:`ReplicaSession`.
    """
    if isinstance(replica, AsyncEngine):
        replicas: Engine | list[Engine] = replica.sync_engine
    else:
        replicas = [engine.sync_engine for engine in replica]
    return async_sessionmaker(primary, sync_session_class=ReplicaSession, replica=replicas, **kw)
