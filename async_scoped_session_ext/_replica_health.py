"""The health of each replica engine, shared by every session of the process.

One :class:`ReplicaHealth` per replica engine (keyed weakly by the engine, so all the
sessions and threads of a process share it): whether the replica is down and until when
reads skip it (the back-off), and the last measured replication lag. A replica that
cannot be connected to is marked down for the back-off; once it expires, one session (and
only one) tries it again: back up, the replica is used again; still down, it is skipped
for another back-off. Each outage is logged once: a WARNING when the replica goes down,
an INFO when it is back. The lag (``now() - pg_last_xact_replay_timestamp()``, or 0 while
the standby has replayed all it received) is measured at most once per interval.

The state is guarded by a lock: Flask serves requests in threads, and async sessions run
their sync core in greenlets of one loop; both reach the same code.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import typing as t
import weakref

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ._disconnects import protocol_errors

Attempt = t.Literal["use", "skip", "probe"]

logger = logging.getLogger("async_scoped_session_ext.replicas")

#: What a failed connection to a replica raises: a DBAPI error (refused, starting up,
#: authentication), the pool's timeout, or the driver's own socket error (asyncpg raises
#: ``ConnectionRefusedError`` and ``TimeoutError`` unwrapped).
_UNREACHABLE: tuple[type[BaseException], ...] = (DBAPIError, PoolTimeoutError, OSError)


def unreachable() -> tuple[type[BaseException], ...]:
    """The errors that say a replica cannot serve a read now (for an ``except`` clause).

    SQLAlchemy's, and asyncpg's own: SQLAlchemy before 2.0.50 raises some of asyncpg's
    errors unwrapped (``CannotConnectNowError`` from a standby that is shutting down, and
    the ``InternalClientError`` of a connection it cut: ``_disconnects``).
    """
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is None:
        return _UNREACHABLE
    return (*_UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError, *protocol_errors())


#: PostgreSQL's replication lag in seconds; 0 when the standby has replayed all it received
#: (an idle primary sends nothing, and the last replayed commit then only looks old).
LAG_SQL = text(
    "SELECT CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()"
    " THEN 0 ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)"
    " END"
)


class ReplicaHealth:
    """Whether one replica engine may be read from now: its back-off and its lag."""

    def __init__(self, engine: Engine) -> None:
        self.name = engine.url.render_as_string(hide_password=True)
        self._lock = threading.Lock()
        #: ``time.monotonic()`` until which reads skip the replica; ``None``: it is up.
        self.down_until: float | None = None
        #: The last measured lag in seconds, and when it was measured (monotonic).
        self.lag: float = 0.0
        self.lag_checked_at: float | None = None
        self.lagging = False

    @property
    def is_down(self) -> bool:
        """Whether the replica was found unreachable and has not answered since."""
        return self.down_until is not None

    def may_try(self, now: float, backoff: float) -> Attempt:
        """Whether a session may connect to the replica now: ``"use"`` it (it is up),
        ``"skip"`` it (the back-off runs), or ``"probe"`` it (the back-off expired: the
        caller is the one session that tries again; the others skip it for another
        back-off). Only a probe that connects brings the replica back (:meth:`mark_up`):
        a session that passed this check before the outage began proves nothing.
        """
        with self._lock:
            if self.down_until is None:
                return "use"
            if now < self.down_until:
                return "skip"
            self.down_until = now + backoff
            return "probe"

    def mark_down(self, error: BaseException, backoff: float) -> None:
        """The replica could not be reached: skip it for *backoff* seconds."""
        with self._lock:
            first = self.down_until is None
            self.down_until = time.monotonic() + backoff
        if first:
            logger.warning(
                "Read replica %s is unreachable (%s: %s); reads go to the primary and it"
                " is tried again every %s s until it answers.",
                self.name,
                type(error).__name__,
                str(error).strip().splitlines()[0] if str(error).strip() else "",
                backoff,
            )

    def mark_up(self) -> None:
        """A probe connected: reads may use the replica again."""
        with self._lock:
            was_down, self.down_until = self.down_until is not None, None
        if was_down:
            logger.info("Read replica %s is back; reads use it again.", self.name)

    def lag_within(self, connection: Connection, max_lag: float, interval: float) -> bool:
        """Whether the replica's lag is at most *max_lag* seconds.

        Measured on *connection* (the session's own, to the replica) when the last
        measurement is older than *interval* seconds; otherwise the last one is used.
        """
        now = time.monotonic()
        with self._lock:
            due = self.lag_checked_at is None or now - self.lag_checked_at >= interval
            if due:
                self.lag_checked_at = now  # one measurement per interval, whoever asks
        if due:
            self.lag = float(connection.execute(LAG_SQL).scalar_one())
            self._log_lag(max_lag)
        return self.lag <= max_lag

    def _log_lag(self, max_lag: float) -> None:
        lagging = self.lag > max_lag
        if lagging == self.lagging:
            return
        self.lagging = lagging
        if lagging:
            logger.warning(
                "Read replica %s lags %.1f s behind the primary (max_lag=%s s): reads go"
                " elsewhere until it catches up.",
                self.name,
                self.lag,
                max_lag,
            )
        else:
            logger.info("Read replica %s has caught up; reads use it again.", self.name)


_healths: weakref.WeakKeyDictionary[Engine, ReplicaHealth] = weakref.WeakKeyDictionary()
_healths_lock = threading.Lock()


def health_of(engine: Engine) -> ReplicaHealth:
    """The process-wide health of the replica *engine* (made on first use)."""
    health = _healths.get(engine)
    if health is None:
        with _healths_lock:
            health = _healths.setdefault(engine, ReplicaHealth(engine))
    return health
