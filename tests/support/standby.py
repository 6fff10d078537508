"""A real primary and a streaming hot standby of it, for the replica tests.

``streaming_pair`` (session-scoped) makes two PostgreSQL 15 clusters with the server's own
binaries (``initdb``, ``pg_basebackup -R``, ``pg_ctl``; ``/usr/lib/postgresql/15/bin``, or
``ASSE_PG_BIN``) in a temporary directory, each on a free port of 127.0.0.1 with trust
authentication, and waits until the standby streams from the primary
(``pg_stat_replication``). PostgreSQL refuses to run as root: as root, every command runs as
the ``postgres`` user (``runuser``) and the directory is handed to that user. The machine's
own server (``ASSE_POSTGRES_URL``) is never touched. At the end of the session both clusters
are stopped and the directory removed, also when a test failed; every wait is bounded.

The fixture skips its tests when the binaries are missing (fails them with CI=true).
"""

from __future__ import annotations

import collections.abc as cabc
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import typing as t
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from .environment import IN_CI

PG_BIN = Path(os.environ.get("ASSE_PG_BIN", "/usr/lib/postgresql/15/bin"))
TIMEOUT = 30.0  # seconds for a cluster to start or stop, and for the standby to catch up
SERVER_SETTINGS = """
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 4
hot_standby = on
max_connections = 60
shared_buffers = 16MB
fsync = off
full_page_writes = off
wal_receiver_status_interval = 1s
"""


def _as_postgres(*command: str | Path) -> list[str]:
    """*command*, run as the ``postgres`` user when this process is root."""
    args = [str(part) for part in command]
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _run(*command: str | Path) -> None:
    result = subprocess.run(
        _as_postgres(*command), capture_output=True, text=True, timeout=TIMEOUT + 10
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StreamingPair:
    """A running primary and its streaming standby; the URLs of each, and their controls."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = {"primary": _free_port(), "standby": _free_port()}
        self.dirs = {role: root / role for role in self.ports}

    def url(self, role: str, driver: str = "psycopg") -> str:
        """The URL of the ``postgres`` database on *role* (``primary`` or ``standby``)."""
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.ports[role]}/postgres"

    def _pg_ctl(self, role: str, *args: str) -> None:
        log = self.root / f"{role}.log"
        _run(PG_BIN / "pg_ctl", "-D", self.dirs[role], "-l", log, "-w", "-t", "30", *args)

    def start(self) -> None:
        """Make both clusters and wait until the standby streams from the primary."""
        primary, standby = self.dirs["primary"], self.dirs["standby"]
        _run(PG_BIN / "initdb", "-D", primary, "-U", "postgres", "--auth=trust", "--no-sync")
        settings = SERVER_SETTINGS + f"unix_socket_directories = '{self.root}'\n"
        with (primary / "postgresql.conf").open("a") as conf:
            conf.write(settings + f"port = {self.ports['primary']}\n")
        self._pg_ctl("primary", "start")
        _run(
            PG_BIN / "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(self.ports["primary"]), "-U", "postgres"),
            *("-D", str(standby), "-R", "-X", "stream", "--no-sync"),
        )
        with (standby / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.ports['standby']}\n")
        self._pg_ctl("standby", "start")
        self.wait_streaming()

    def scalar(self, role: str, sql: str) -> t.Any:
        """The first value of *sql* run on *role* in a connection of its own."""
        engine = create_engine(self.url(role), connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                return conn.execute(text(sql)).scalar()
        finally:
            engine.dispose()

    def _wait(self, what: str, check: cabc.Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {TIMEOUT} s (logs in {self.root})")
            time.sleep(0.05)

    def wait_streaming(self) -> None:
        """Wait until the primary sees its standby streaming."""
        sql = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        self._wait("the standby streams", lambda: self.scalar("primary", sql) == 1)

    def wait_replayed(self) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        lsn = self.scalar("primary", "SELECT pg_current_wal_lsn()::text")
        sql = f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
        self._wait("the standby catches up", lambda: bool(self.scalar("standby", sql)))

    def stop_standby(self) -> None:
        """Stop the standby (``pg_ctl stop -m fast``): its connections are cut."""
        self._pg_ctl("standby", "stop", "-m", "fast")

    def start_standby(self) -> None:
        """Start the standby again and wait until it streams."""
        self._pg_ctl("standby", "start")
        self.wait_streaming()

    def stop(self) -> None:
        """Stop both clusters, whatever state they are in."""
        for role in ("standby", "primary"):
            if (self.dirs[role] / "postmaster.pid").exists():
                subprocess.run(
                    _as_postgres(
                        PG_BIN / "pg_ctl", "-D", self.dirs[role], "stop", "-m", "immediate"
                    ),
                    capture_output=True,
                    timeout=TIMEOUT,
                    check=False,
                )


@pytest.fixture(scope="session")
def streaming_pair() -> cabc.Iterator[StreamingPair]:
    """A PostgreSQL primary and a streaming hot standby of it, for the whole test session."""
    if not (PG_BIN / "pg_basebackup").exists():
        reason = f"needs PostgreSQL's server binaries in {PG_BIN} (ASSE_PG_BIN)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="asse-standby-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    pair = StreamingPair(root)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()
        shutil.rmtree(root, ignore_errors=True)
