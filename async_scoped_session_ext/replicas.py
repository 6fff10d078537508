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

Replication lag is the database's business: the replica may not have a row the primary
committed a moment ago.
"""

from __future__ import annotations

import typing as t

from sqlalchemy import CompoundSelect, Connection, Engine, Select
from sqlalchemy.orm import Session, sessionmaker

from ._sa_asyncio import AsyncEngine, AsyncSession, async_sessionmaker

if t.TYPE_CHECKING:
    from sqlalchemy.sql.elements import ClauseElement

__all__ = ["ReplicaSession", "async_replica_sessionmaker", "replica_sessionmaker"]

USE_PRIMARY = "use_primary"
"""The execution option, and the ``session.info`` key, that send reads to the primary."""


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

    :param replica: the replica's engine (a sync :class:`~sqlalchemy.engine.Engine`).
    """

    def __init__(self, *args: t.Any, replica: Engine, **kw: t.Any) -> None:
        super().__init__(*args, **kw)
        self.replica: Engine = replica
        #: Whether the session has used the primary for anything but a forced read; then
        #: everything bound to the primary goes to the primary until the session is closed,
        #: reset or invalidated.
        self.wrote: bool = False
        if self.bind is None and kw.get("binds"):
            raise TypeError(_NO_PRIMARY)

    def get_bind(
        self, mapper: t.Any = None, *, clause: ClauseElement | None = None, **kw: t.Any
    ) -> Engine | Connection:
        """The replica for a plain read of the primary; otherwise the usual bind."""
        bind = super().get_bind(mapper, clause=clause, **kw)
        if self.bind is None:  # binds added after the session was made, or bind= given
            raise TypeError(_NO_PRIMARY)
        if bind.engine is not self.bind.engine:
            return bind  # another database: as plain SQLAlchemy routes it
        if self._reads_from_replica(clause):
            return self.replica
        if not _forced(clause):
            self.wrote = True
        return bind

    def _reads_from_replica(self, clause: ClauseElement | None) -> bool:
        if self.wrote or self._flushing or self.info.get(USE_PRIMARY):
            return False
        if not isinstance(clause, Select | CompoundSelect) or _forced(clause):
            return False
        return getattr(clause, "_for_update_arg", None) is None  # FOR UPDATE locks: primary

    # Session.close(), reset() and invalidate() share a private _close_impl(); the public
    # methods are overridden instead, each one ending the session's writes.

    def close(self) -> None:
        """Close the session; its next statements read from the replica again."""
        try:
            super().close()
        finally:
            self.wrote = False

    def reset(self) -> None:
        """Reset the session (SQLAlchemy 2.0.22+); its next statements read from the replica."""
        try:
            super().reset()
        finally:
            self.wrote = False

    def invalidate(self) -> None:
        """Close the session, invalidating its connections; reads go to the replica again."""
        try:
            super().invalidate()
        finally:
            self.wrote = False


_NO_PRIMARY = (
    "ReplicaSession has no 'bind', so it does not know which of its databases the replica"
    " replicates, and would send no read to the replica. Bind it to that database, beside"
    " any 'binds': sessionmaker(primary_engine, class_=ReplicaSession, binds=...,"
    " replica=replica_engine), or replica_sessionmaker(primary_engine, replica_engine,"
    " binds=...)."
)


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
