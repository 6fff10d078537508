"""Read replicas: plain reads go to a replica engine, everything else to the primary.

SQLAlchemy's ``Session.get_bind()`` pattern ("Custom Vertical Partitioning" in its docs)::

    factory = replica_sessionmaker(primary_engine, replica_engine)
    session = flask_scoped_session(factory, app)

    factory = async_replica_sessionmaker(primary_async_engine, replica_async_engine)
    session = async_scoped_session(factory, app)

A session sends a ``SELECT`` to the replica until it writes: flushes, ``INSERT``,
``UPDATE``, ``DELETE``, ``SELECT ... FOR UPDATE``, textual SQL and anything else that is not a
plain ``SELECT`` go to the primary and count as writes, and once a session has written, all
its statements go to the primary until it is closed (so a request reads its own writes,
including the reloading of objects expired by ``commit()``). To read from the primary before
writing::

    select(User).execution_options(use_primary=True)  # one statement
    session.info["use_primary"] = True                  # the rest of the session's life

Replication lag is the database's business: the replica may not have a row the primary
committed a moment ago.
"""

from __future__ import annotations

import typing as t

from sqlalchemy import CompoundSelect, Connection, Engine, Select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

if t.TYPE_CHECKING:
    from sqlalchemy.sql.elements import ClauseElement

__all__ = ["ReplicaSession", "async_replica_sessionmaker", "replica_sessionmaker"]

USE_PRIMARY = "use_primary"
"""The execution option, and the ``session.info`` key, that send reads to the primary."""


class ReplicaSession(Session):
    """A :class:`~sqlalchemy.orm.Session` that reads from *replica* until it writes.

    The session's ``bind`` (or ``binds``) is the primary. Plain ``SELECT`` statements go to
    *replica*, unless the statement has the execution option ``use_primary=True``,
    ``session.info["use_primary"]`` is true, or the session has written since it was last
    closed. Everything else (flushes, DML, locking reads, textual SQL, ``connection()``)
    goes to the primary and counts as a write.

    :param replica: the replica's engine (a sync :class:`~sqlalchemy.engine.Engine`).
    """

    def __init__(self, *args: t.Any, replica: Engine, **kw: t.Any) -> None:
        super().__init__(*args, **kw)
        self.replica: Engine = replica
        #: Whether the session has used the primary for anything but a forced read; then
        #: everything goes to the primary until the session is closed.
        self.wrote: bool = False

    def get_bind(
        self, mapper: t.Any = None, *, clause: ClauseElement | None = None, **kw: t.Any
    ) -> Engine | Connection:
        """The replica for a plain read, the primary (the usual bind) for anything else."""
        if self._reads_from_replica(clause):
            return self.replica
        if not _forced(clause):
            self.wrote = True
        return super().get_bind(mapper, clause=clause, **kw)

    def _reads_from_replica(self, clause: ClauseElement | None) -> bool:
        if self.wrote or self._flushing or self.info.get(USE_PRIMARY):
            return False
        if not isinstance(clause, Select | CompoundSelect) or _forced(clause):
            return False
        return getattr(clause, "_for_update_arg", None) is None  # FOR UPDATE locks: primary

    def close(self) -> None:
        """Close the session; its next statements read from the replica again."""
        super().close()
        self.wrote = False


def _forced(clause: ClauseElement | None) -> bool:
    """Whether *clause* asks for the primary with ``execution_options(use_primary=True)``."""
    options = getattr(clause, "get_execution_options", None)
    return bool(options is not None and options().get(USE_PRIMARY))


def replica_sessionmaker(
    primary: Engine, replica: Engine, **kw: t.Any
) -> sessionmaker[ReplicaSession]:
    """A ``sessionmaker`` of :class:`ReplicaSession` bound to *primary*, reading from *replica*.

    Keyword arguments go to :class:`~sqlalchemy.orm.sessionmaker`.
    """
    return sessionmaker(primary, class_=ReplicaSession, replica=replica, **kw)


def async_replica_sessionmaker(
    primary: AsyncEngine, replica: AsyncEngine, **kw: t.Any
) -> async_sessionmaker[AsyncSession]:
    """An ``async_sessionmaker`` whose sessions wrap a :class:`ReplicaSession`.

    ``get_bind()`` runs on the wrapped sync session, so it is given the engines'
    ``sync_engine``. Keyword arguments go to
    :class:`~sqlalchemy.ext.asyncio.async_sessionmaker`.
    """
    return async_sessionmaker(
        primary, sync_session_class=ReplicaSession, replica=replica.sync_engine, **kw
    )
