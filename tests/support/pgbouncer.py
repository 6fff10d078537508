"""A real PgBouncer for tests, in front of the test PostgreSQL database.

``PgBouncer(target_url)`` runs the ``pgbouncer`` binary (the Debian package's
``/usr/sbin/pgbouncer``) in the foreground, on a free port of 127.0.0.1, from a temporary
directory that holds its ini file, auth file and log. It uses trust authentication and
forwards the target URL's database under the same name, so a client URL differs from the
target's only in host and port::

    with PgBouncer(postgres_url("asyncpg")) as bouncer:
        engine = create_async_engine(bouncer.url("asyncpg"))

PgBouncer refuses to run as root ("PgBouncer should not run as root"). As root, it is
started with ``-u postgres`` (the user the Debian package creates; ``nobody`` otherwise):
it reads its ini file as root, then switches user before it opens its log file, so the
temporary directory is handed to that user.

mirakuru's ``TCPExecutor`` starts the process, waits until it accepts connections (and has
logged that it listens), and stops it: SIGTERM, then SIGKILL after ``TIMEOUT``. The ini
file, the retries on a port taken meanwhile, and the messages with PgBouncer's log are ours.

The ``pgbouncer_url`` fixture starts one per test, in transaction mode with a pool of two
server connections, and skips the test when the binary is missing (fails it with CI=true).
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import typing as t
from pathlib import Path

import pytest
from mirakuru import (
    AlreadyRunning,
    ExecutorError,
    ProcessExitedWithError,
    TCPExecutor,
    TimeoutExpired,
)
from mirakuru.exceptions import ProcessFinishedWithError
from sqlalchemy import URL, make_url

from .databases import postgres_url, require_postgres
from .environment import IN_CI

if t.TYPE_CHECKING:
    from types import TracebackType

DEBIAN_BINARY = "/usr/sbin/pgbouncer"
TIMEOUT = 10.0  # seconds until PgBouncer accepts connections, and after SIGTERM until SIGKILL
START_ATTEMPTS = 3  # a free port may be taken before PgBouncer binds it


def find_pgbouncer() -> str | None:
    """The path of the ``pgbouncer`` binary, or ``None`` when it is not installed."""
    found = shutil.which("pgbouncer")
    if found is not None:
        return found
    if os.access(DEBIAN_BINARY, os.X_OK):  # /usr/sbin is not on every user's PATH
        return DEBIAN_BINARY
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return t.cast(int, sock.getsockname()[1])


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user PgBouncer must switch to when we are root, else ``None``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("PgBouncer refuses to run as root, and there is no 'postgres' user")


class _Executor(TCPExecutor):
    """mirakuru's TCP executor, started once *bouncer* also logs that it listens.

    The log line matters: a process that took the port first would accept connections
    while PgBouncer exits with "nowhere to listen on".
    """

    def __init__(self, bouncer: PgBouncer, command: list[str], **popen: t.Any) -> None:
        super().__init__(command, bouncer.host, bouncer.port, timeout=TIMEOUT, sleep=0.02, **popen)
        self.bouncer = bouncer

    def after_start_check(self) -> bool:
        listening = f"listening on {self.host}:{self.port}" in self.bouncer.log()
        return listening and super().after_start_check()


def _quote(value: str) -> str:
    """A value for the auth file, in double quotes."""
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """A PgBouncer process on ``127.0.0.1:<port>`` in front of *target*'s database.

    :param target: the PostgreSQL URL to forward to (any driver; its user logs in).
    :param binary: the ``pgbouncer`` executable; found with :func:`find_pgbouncer`.
    :param pool_mode: PgBouncer's ``pool_mode``.
    :param default_pool_size: server connections per database and user.
    :param settings: further ``[pgbouncer]`` settings, written as given.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        target: str | URL,
        *,
        binary: str | None = None,
        pool_mode: str = "transaction",
        default_pool_size: int = 2,
        settings: cabc.Mapping[str, str] | None = None,
    ) -> None:
        self.target = make_url(target)
        found = binary or find_pgbouncer()
        if found is None:
            raise FileNotFoundError("the pgbouncer binary is not installed")
        self.binary = found
        self.settings = {
            "pool_mode": pool_mode,
            "default_pool_size": str(default_pool_size),
            **(settings or {}),
        }
        self._port: int | None = None
        self._dir: Path | None = None
        self._executor: _Executor | None = None

    @property
    def port(self) -> int:
        """The port PgBouncer listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("PgBouncer is not started")
        return self._port

    def url(self, driver: str = "asyncpg") -> str:
        """The target's URL through PgBouncer, with *driver* (password included)."""
        return self.target.set(
            drivername=f"postgresql+{driver}", host=self.host, port=self.port
        ).render_as_string(hide_password=False)

    def log(self) -> str:
        """What PgBouncer logged so far: its log file, or its stderr before it opened one."""
        if self._dir is None:
            return ""
        for name in ("pgbouncer.log", "stderr.log"):  # stderr repeats the log file
            with contextlib.suppress(OSError):
                text = (self._dir / name).read_text(errors="replace")
                if text:
                    return text
        return ""

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> PgBouncer:
        """Start PgBouncer and wait until it accepts connections; return ``self``.

        A failure raises ``RuntimeError`` with what happened, what to do, and PgBouncer's log.
        """
        if self._executor is not None:
            raise RuntimeError("PgBouncer is already started")
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once()
            except ExecutorError as error:
                log = self.log()
                self.stop()
                port_taken = isinstance(error, AlreadyRunning) or "Address already in use" in log
                if not (port_taken and attempt < START_ATTEMPTS):
                    log = log or "(empty: it logged nothing)"
                    raise RuntimeError(f"{self._failure(error)}\n--- its log ---\n{log}") from error
            else:
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_once(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="asse-pgbouncer-"))
        self._port = _free_port()
        ini = self._write_config(self._dir, self._port)
        user = _unprivileged_user()
        command = [self.binary]
        if user is not None:
            command += ["-u", user.pw_name]
            for path in (self._dir, *self._dir.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
        command.append(str(ini))
        with open(self._dir / "stderr.log", "wb") as stderr:
            self._executor = _Executor(
                self, command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )
            self._executor.start()

    def _write_config(self, directory: Path, port: int) -> Path:
        target = self.target
        database = target.database or "postgres"
        user = target.username or "postgres"
        connstring = (
            f"host={target.host or '127.0.0.1'} port={target.port or 5432}"
            f" dbname={database} user={user}"
        )
        if target.password is not None:
            connstring += f" password='{target.password}'"
        settings = {
            "listen_addr": self.host,
            "listen_port": str(port),
            "unix_socket_dir": "",
            "logfile": str(directory / "pgbouncer.log"),
            "auth_type": "trust",
            "auth_file": str(directory / "users.txt"),
            "max_client_conn": "100",
            **self.settings,
        }
        lines = ["[databases]", f"{database} = {connstring}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        ini = directory / "pgbouncer.ini"
        ini.write_text("\n".join(lines) + "\n")
        ini.chmod(0o600)
        users = directory / "users.txt"
        users.write_text(f"{_quote(user)} {_quote(target.password or '')}\n")
        users.chmod(0o600)
        return ini

    def _failure(self, error: ExecutorError) -> str:
        """What went wrong at start, the likely cause, and what to do."""
        where = f"{self.host}:{self._port}"
        if isinstance(error, ProcessExitedWithError):
            return (
                f"PgBouncer ({self.binary}) exited with code {error.exit_code} while starting"
                f" on {where}. Its log says why: usually a setting it does not know (fix the"
                " settings given to PgBouncer()), or its port taken on every attempt."
            )
        if isinstance(error, TimeoutExpired):
            return (
                f"PgBouncer did not accept connections on {where} within {TIMEOUT} s and was"
                " killed: the machine is likely overloaded (run fewer tests at once)."
            )
        return (  # AlreadyRunning on every attempt
            f"Another process listened on each of the {START_ATTEMPTS} free ports picked for"
            f" PgBouncer (the last {where}): run fewer tests or servers at once."
        )

    def stop(self) -> None:
        """Stop PgBouncer (SIGTERM, SIGKILL after ``TIMEOUT``) and remove its directory."""
        executor, self._executor = self._executor, None
        if executor is not None:
            # SIGTERM: an immediate shutdown before PgBouncer 1.23, which exits with 1 (mirakuru
            # expects 0 or -SIGTERM); from 1.23 it waits for the clients to disconnect.
            with contextlib.suppress(ProcessFinishedWithError):
                executor.stop()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def require_pgbouncer() -> str:
    """The pgbouncer binary; skip the test (locally) or fail it (with CI=true) without one."""
    binary = find_pgbouncer()
    if binary is None:
        reason = (
            f"the pgbouncer binary is not installed (not on PATH, no {DEBIAN_BINARY});"
            " install it with: apt-get install pgbouncer"
        )
        if IN_CI:
            pytest.fail(f"CI=true needs PgBouncer, but {reason}")
        pytest.skip(reason)
    return binary


@pytest.fixture
def pgbouncer() -> cabc.Iterator[PgBouncer]:
    """A PgBouncer of this test's own in transaction mode (pool of 2) before the test DB."""
    binary = require_pgbouncer()
    require_postgres()
    with PgBouncer(postgres_url("asyncpg"), binary=binary) as bouncer:
        yield bouncer


@pytest.fixture
def pgbouncer_url(pgbouncer: PgBouncer) -> str:
    """An asyncpg URL of the test database through a PgBouncer in transaction mode."""
    return pgbouncer.url("asyncpg")
