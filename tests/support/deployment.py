"""The recipes of docs/deployment.md, run as the page says: a fresh PostgreSQL database, the
one-off command that creates the tables, a real server in a process group of its own,
concurrent requests, then SIGTERM to the server's main process only.

The apps are ``deploy_flask.py``, ``deploy_flask_async.py`` and ``deploy_quart.py`` (the page
includes them), served with the probes of ``deploy_probes.py``.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc as cabc
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

import httpx
from sqlalchemy import make_url

from .databases import POSTGRES_URL, connect_admin, require_postgres
from .environment import child_environ
from .scripts import REPO_ROOT

#: The one-off command run before the server starts, after the app's ``--app`` option:
#: ``flask --app myapp db upgrade``, in the project directory that holds ``migrations/``.
ONE_OFF = ("db", "upgrade")
#: How the project got its ``migrations/`` during development (then committed with the
#: app): the tests make it the same way, against the new empty database.
DEVELOPMENT = (("db", "init"), ("db", "revision", "--autogenerate", "-m", "create tables"))

#: The server commands of docs/deployment.md, as the page writes them, with ``{workers}``,
#: ``{bind}`` (``host:port``), ``{host}``, ``{port}`` and ``{app}`` in place of its numbers
#: (``tests/test_deployment.py::test_the_page_shows_the_recipes_the_tests_run`` keeps them equal).
RECIPES = {
    "gthread": "gunicorn -w {workers} -k gthread --threads 4 -b {bind} {app}",
    "preload": "gunicorn --preload -w {workers} -k gthread --threads 4 -b {bind} {app}",
    "gevent": "gunicorn -w {workers} -k gevent -b {bind} {app}",
    "hypercorn": "hypercorn -w {workers} -b {bind} {app}",
    "uvicorn": "uvicorn --workers {workers} --host {host} --port {port} {app}",
}

#: Which app each kind of app module serves, its CLI, its driver, its application_name.
APPS = {
    "flask_app": ("flask", "tests.support.deploy_flask", "psycopg", "myapp"),
    "flask_async_app": ("flask", "tests.support.deploy_flask_async", "asyncpg", "myapp"),
    "quart_app": ("quart", "tests.support.deploy_quart", "asyncpg", "myquartapp"),
}

START_TIMEOUT = 30.0  # seconds a server may take to answer its first request
STOP_TIMEOUT = 20.0  # seconds a server may take to exit after SIGTERM
REQUEST_TIMEOUT = 20.0


@contextlib.contextmanager
def fresh_database() -> cabc.Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards. Yields its name."""
    require_postgres()
    name = f"asse_deploy_{uuid.uuid4().hex[:12]}"
    with connect_admin(autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with connect_admin(autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def backends(database: str, application_name: str) -> int:
    """How many server backends are connected to *database* as *application_name*."""
    with connect_admin() as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where datname = %s and application_name = %s",
            (database, application_name),
        ).fetchone()
    return int(row[0]) if row else 0


def backends_once_gone(database: str, application_name: str, wait: float = 10.0) -> int:
    """The backends left once those of ended connections are gone (they exit a moment after
    their client hangs up): polled, at most *wait* seconds."""
    deadline = time.monotonic() + wait
    while (left := backends(database, application_name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class Deployment:
    """One recipe run against one fresh database."""

    recipe: str
    app: str  # a key of APPS
    database: str
    tmp_path: Path
    workers: int = 2
    pool: tuple[int, int] = (5, 10)  # pool_size, max_overflow
    port: int = dataclasses.field(default_factory=free_port)
    server: subprocess.Popen[bytes] | None = None
    log: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def application_name(self) -> str:
        return APPS[self.app][3]

    @property
    def events_path(self) -> Path:
        return self.tmp_path / "pool-events.txt"

    def environ(self) -> dict[str, str]:
        _, _, driver, _ = APPS[self.app]
        url = make_url(POSTGRES_URL).set(drivername=f"postgresql+{driver}", database=self.database)
        return {
            **child_environ(),
            "DATABASE_URL": url.render_as_string(hide_password=False),
            "POOL_SIZE": str(self.pool[0]),
            "MAX_OVERFLOW": str(self.pool[1]),
            "ASSE_DEPLOY_APP": self.app,
            "ASSE_DEPLOY_EVENTS": str(self.events_path),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        }

    def run_one_off(self) -> str:
        """``flask --app myapp db upgrade`` (or ``quart``): migrate the database, once.

        The project's ``migrations/`` is made first, as during development.
        """
        project = self.tmp_path / "project"
        project.mkdir(exist_ok=True)
        for step in DEVELOPMENT:
            self._cli(step, project)
        return self._cli(ONE_OFF, project)

    def _cli(self, args: tuple[str, ...], cwd: Path) -> str:
        cli, module, _, _ = APPS[self.app]
        result = subprocess.run(
            [sys.executable, "-m", cli, "--app", module, *args],
            env=self.environ(),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        assert result.returncode == 0, f"{' '.join(args)}: {result.stdout}{result.stderr}"
        return result.stdout

    def command(self) -> list[str]:
        address = {"bind": f"127.0.0.1:{self.port}", "host": "127.0.0.1", "port": self.port}
        app = "tests.support.deploy_probes:app"
        words = RECIPES[self.recipe].format(app=app, workers=self.workers, **address)
        server, *args = words.split()
        return [sys.executable, "-m", server, *args]

    @contextlib.contextmanager
    def serving(self) -> cabc.Iterator[Deployment]:
        """Start the server; stop it with SIGTERM to its main process (``self.log`` then has
        its output); kill its whole process group if it does not stop in time."""
        log_file = (self.tmp_path / "server.log").open("w+b")
        self.server = subprocess.Popen(
            self.command(),
            env=self.environ(),
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait_until_answering()
            yield self
        finally:
            with contextlib.suppress(ProcessLookupError):
                self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait(STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):  # workers left behind, if any
                os.killpg(self.server.pid, signal.SIGKILL)
            log_file.seek(0)
            self.log = log_file.read().decode(errors="replace")
            log_file.close()

    def wait_until_answering(self) -> None:
        assert self.server is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.server.poll() is None:
            try:
                httpx.get(f"{self.base_url}/probe/stats", timeout=2, trust_env=False)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"the server did not answer (exit code {self.server.poll()})")

    def events(self) -> list[tuple[int, str]]:
        """Every pool connection opened or closed: ``(pid, "connect" or "close")``, in the
        order each process wrote them."""
        lines = self.events_path.read_text().splitlines()
        return [(int(pid), what) for pid, what in (line.split() for line in lines)]

    def connections_by_process(self) -> dict[int, collections.Counter[str]]:
        """Per process: how many pool connections it opened and closed."""
        counts: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for pid, what in self.events():
            counts[pid][what] += 1
        return dict(counts)

    def most_open_by_process(self) -> dict[int, int]:
        """Per process: the most pool connections it had open at once."""
        open_now: collections.Counter[int] = collections.Counter()
        most: dict[int, int] = {}
        for pid, what in self.events():
            open_now[pid] += 1 if what == "connect" else -1
            most[pid] = max(most.get(pid, 0), open_now[pid])
        return most


def client(base_url: str, concurrency: int) -> httpx.AsyncClient:
    """An async client for loopback with room for *concurrency* requests at once."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=REQUEST_TIMEOUT,
        trust_env=False,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )


async def send_all(
    base_url: str, requests: t.Sequence[tuple[str, str, t.Any]]
) -> list[httpx.Response]:
    """Send every ``(method, path, json)`` request at once; their responses, in order."""
    async with client(base_url, len(requests)) as http:
        return list(
            await asyncio.gather(
                *(http.request(method, path, json=body) for method, path, body in requests)
            )
        )
