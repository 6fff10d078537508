"""Stress: a hypercorn-served Quart app on PostgreSQL (asyncpg) under faults; leaks and memory.

The server is a subprocess (``python -m stress.quart_stress --serve ...``) so that its memory
is measured on its own. It serves a Quart app with
``async_scoped_session(async_sessionmaker(create_async_engine(url)), app)`` on a listening
socket the parent binds on 127.0.0.1 and hands over. Its ``/work`` view inserts a row into a
table of its own through ``current_session``, flushes, reads the row back and, depending on
the query, raises an injected fault (a 500), runs ``pg_sleep`` and commits or not; ``/stats``
reports the registry size, the pool's checked-out connections and the process's RSS.

The parent sends a seeded mix of requests with bounded concurrency: normal ones, ones that
raise after flushing, slow ones, and ones whose client goes away mid-query (a raw socket that
closes or resets, or an httpx request with a tiny timeout), so that the server cancels the
handler. Then it lets the server settle and checks for leaks: checked-out connections,
registered sessions, PostgreSQL backends of the app that are active or idle in a transaction,
rows of transactions that were never committed, and warnings or tracebacks on the server's
stderr. Run it with ``python3 -m nox -s stress`` or ``python -m stress.quart_stress --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import collections.abc as cabc
import contextlib
import ctypes
import gc
import importlib.metadata
import json
import logging
import os
import platform
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import typing as t
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
from quart import Quart, g, has_app_context, request
from sqlalchemy import BigInteger, Table, insert, make_url, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool, QueuePool

from async_scoped_session_ext import async_scoped_session, current_session

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
_T = t.TypeVar("_T")

# The request mix: each kind's weight (see plan() for what each kind does).
NORMAL, RAISE, SLOW, DISCONNECT, TIMEOUT = "normal", "raise", "slow", "disconnect", "timeout"
MIX: dict[str, float] = {NORMAL: 70, RAISE: 10, SLOW: 10, DISCONNECT: 5, TIMEOUT: 5}
# Faults the view injects after flushing: Python exceptions, and database errors that leave
# the transaction aborted (a failing statement, a unique violation).
FAULTS = ("value", "lookup", "runtime", "sql", "integrity")
SLEEP_RANGE = (0.05, 0.3)  # seconds of pg_sleep for slow and disconnected requests

# Results of one request. Which are expected depends on its kind (see EXPECTED).
OK_200, ERROR_500 = "200", "500"
CLIENT_TIMEOUT = "client timeout"  # the tiny timeout of a TIMEOUT request fired: intended
DISCONNECTED = "disconnected"  # a DISCONNECT request's socket was closed: intended
REQUEST_TIMEOUT = "request timeout"  # the per-request timeout fired on a request: a failure
CONNECTION_ERROR = "connection error"
BAD_BODY = "bad body"  # a 200 whose JSON is not what the request should have produced
DEADLINE = "deadline"  # still in flight when --max-seconds ran out
EXPECTED: dict[str, frozenset[str]] = {
    NORMAL: frozenset({OK_200}),
    SLOW: frozenset({OK_200}),
    RAISE: frozenset({ERROR_500}),
    DISCONNECT: frozenset({DISCONNECTED}),
    TIMEOUT: frozenset({CLIENT_TIMEOUT, OK_200}),  # a fast enough server may still answer
}

STATS_TIMEOUT = 10.0  # seconds for one /stats or pg_stat_activity look-up
# The client drops idle keep-alive connections well before the server closes them: with
# httpx's default (5 s, hypercorn's too) a request now and then goes out on a connection the
# server is closing, and fails with "Server disconnected without sending a response".
SERVER_KEEP_ALIVE = 5.0
CLIENT_KEEP_ALIVE = 2.0
STARTUP_TIMEOUT = 30.0  # seconds for the server to answer /stats
TERMINATE_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL
KILL_TIMEOUT = 5.0
SHUTDOWN_BACKENDS_TIMEOUT = 5.0  # seconds for the app's backends to go after the server stops


# --- the server (in the subprocess) ---------------------------------------------------------


class StressBase(DeclarativeBase):
    pass


class StressRow(StressBase):
    """One row per request; concrete subclasses name the table (see :func:`row_model`)."""

    __abstract__ = True

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    req: Mapped[int]
    committed: Mapped[bool]  # whether the view meant to commit it
    payload: Mapped[str]


def row_model(table: str) -> type[StressRow]:
    """A mapped class for *table* (a name of this run's own)."""
    return t.cast(
        "type[StressRow]", type(f"StressRow_{table}", (StressRow,), {"__tablename__": table})
    )


def rss_kb() -> int | None:
    """This process's resident set size in kB (``VmRSS``), or ``None`` if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def malloc_trim() -> bool:
    """Hand the C heap's free memory back to the OS (glibc only); whether that was possible.

    RSS also counts memory that glibc keeps after Python freed it; trimming it tells heap
    fragmentation apart from objects that are still alive.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


class StressQuart(Quart):
    """A Quart app that counts its unhandled exceptions and logs only the unintended ones."""

    counters: collections.Counter[str]

    def log_exception(
        self,
        exception_info: tuple[type, BaseException, TracebackType] | tuple[None, None, None],
    ) -> None:
        if has_app_context() and g.get("injected_fault", False):
            self.counters["injected_500"] += 1  # intended: no traceback on stderr
            return
        self.counters["unexpected_exception"] += 1
        super().log_exception(exception_info)


class InjectedFault(Exception):
    """The view's own exception type, one of the injected faults."""


async def inject(fault: str, row_table: Table, row_id: int, n: int) -> t.NoReturn:
    """Raise the *fault* the request asked for; the session has flushed a row already."""
    g.injected_fault = True  # see StressQuart.log_exception
    if fault == "sql":  # the transaction is left aborted
        await current_session.execute(text("select 1 / 0"))
    elif fault == "integrity":  # a unique violation: aborted too
        await current_session.execute(
            insert(row_table).values(id=row_id, req=n, committed=False, payload="duplicate")
        )
    elif fault == "value":
        raise ValueError(f"injected fault in request {n}")
    elif fault == "lookup":
        raise KeyError(f"injected fault in request {n}")
    elif fault == "runtime":
        raise RuntimeError(f"injected fault in request {n}")
    raise InjectedFault(f"injected fault {fault!r} in request {n}")


@dataclass
class Server:
    app: StressQuart
    engine: AsyncEngine
    scoped: async_scoped_session[AsyncSession]
    table: Table


def build_app(
    url: str, application_name: str, table_name: str, pool_size: int, max_overflow: int
) -> Server:
    """The stressed app: ``/work`` uses ``current_session``; ``/stats`` reports on it."""
    app = StressQuart("asse_stress")
    app.counters = collections.Counter()
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=30,
        connect_args={"server_settings": {"application_name": application_name}},
    )
    scoped = async_scoped_session(async_sessionmaker(engine), app)
    row_cls = row_model(table_name)
    table = StressBase.metadata.tables[table_name]
    counters = app.counters

    @app.before_serving
    async def create_table() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(table.create)

    @app.after_serving
    async def drop_table() -> None:
        try:
            async with engine.begin() as conn:
                await conn.execute(text("set local lock_timeout = '5s'"))
                await conn.run_sync(table.drop, checkfirst=True)
        finally:
            await engine.dispose()

    @app.get("/work")
    async def work() -> dict[str, object]:
        n = request.args.get("n", default=0, type=int)
        sleep = request.args.get("sleep", default=0.0, type=float)
        commit = request.args.get("commit") == "1"
        fault = request.args.get("fault", "")
        counters["started"] += 1
        try:
            session = current_session()
            row = row_cls(req=n, committed=commit, payload=f"request {n}")
            current_session.add(row)
            await current_session.flush()
            row_id = row.id
            if fault:
                await inject(fault, table, row_id, n)
            if sleep > 0:
                await current_session.execute(text("select pg_sleep(:s)"), {"s": sleep})
            payload = await current_session.scalar(
                select(row_cls.payload).where(row_cls.id == row_id)
            )
            same = current_session() is session and scoped() is session
            if commit:
                await current_session.commit()
        except asyncio.CancelledError:
            counters["cancelled"] += 1
            raise
        except Exception:
            counters["raised"] += 1
            raise
        counters["completed"] += 1
        return {"n": n, "id": row_id, "payload": payload, "same": same, "committed": commit}

    @app.get("/stats")
    async def stats() -> dict[str, object]:
        trim = request.args.get("trim") == "1"
        collected = gc.collect() if trim or request.args.get("gc") == "1" else None
        trimmed = malloc_trim() if trim else None
        pool = engine.pool
        return {
            "registry": len(scoped.registry),
            "checked_out": pool.checkedout() if isinstance(pool, QueuePool) else None,
            "rss_kb": rss_kb(),
            "gc_collected": collected,
            "trimmed": trimmed,
            "counters": dict(counters),
        }

    return Server(app, engine, scoped, table)


def serve_main(args: argparse.Namespace) -> int:
    """Serve the app with hypercorn until SIGTERM or SIGINT (the ``--serve`` mode)."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    warnings.simplefilter("always")  # every SAWarning on stderr, not only the first
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s [%(name)s] %(message)s", stream=sys.stderr
    )
    server = build_app(
        asyncpg_url(args.url),
        args.app_name,
        args.table,
        args.pool_size,
        args.max_overflow,
    )
    config = Config()
    if args.fd is not None:
        config.bind = [f"fd://{args.fd}"]
    else:
        config.bind = [f"{HOST}:{args.port}"]
    config.backlog = 1024
    config.graceful_timeout = 5.0
    config.keep_alive_timeout = SERVER_KEEP_ALIVE
    config.accesslog = None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(server.app, config, shutdown_trigger=stop.wait)

    asyncio.run(run())
    return 0


# --- the client (in the parent) -------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One request of the run, drawn from the seeded RNG."""

    n: int
    kind: str
    sleep: float = 0.0
    commit: bool = False
    fault: str = ""
    close_after: float = 0.0  # DISCONNECT: seconds between sending and closing
    reset: bool = False  # DISCONNECT: close with a TCP reset instead of a FIN
    client_timeout: float = 0.0  # TIMEOUT: the tiny client timeout


def plan(count: int, seed: int) -> list[Planned]:
    """The run's requests: the mix of kinds and their parameters, from *seed*."""
    rng = random.Random(seed)
    kinds, weights = list(MIX), list(MIX.values())
    planned: list[Planned] = []
    for n in range(count):
        kind = rng.choices(kinds, weights)[0]
        if kind == NORMAL:
            planned.append(Planned(n, kind, commit=rng.random() < 0.5))
        elif kind == RAISE:
            planned.append(Planned(n, kind, fault=rng.choice(FAULTS)))
        elif kind == SLOW:
            planned.append(
                Planned(n, kind, sleep=rng.uniform(*SLEEP_RANGE), commit=rng.random() < 0.5)
            )
        elif kind == DISCONNECT:
            sleep = rng.uniform(*SLEEP_RANGE)
            planned.append(
                Planned(
                    n,
                    kind,
                    sleep=sleep,
                    close_after=rng.uniform(0.0, sleep),
                    reset=rng.random() < 0.5,
                )
            )
        else:
            sleep = rng.uniform(0.1, SLEEP_RANGE[1])
            planned.append(Planned(n, kind, sleep=sleep, client_timeout=rng.uniform(0.01, 0.08)))
    return planned


@dataclass(frozen=True)
class Outcome:
    n: int
    kind: str
    result: str
    expected: bool
    seconds: float
    detail: str = ""


@dataclass
class StressConfig:
    """The knobs of one run (the command-line options)."""

    url: str
    requests: int = 5000
    concurrency: int = 32
    seed: int = 1
    max_seconds: float = 300.0
    request_timeout: float = 30.0
    pool_size: int = 10
    max_overflow: int = 10
    settle_seconds: float = 10.0
    sample_interval: float = 2.0
    max_growth_mb: float | None = None
    server_log: Path | None = None


class StressError(Exception):
    """The run could not be carried out (the server did not start, ...)."""


class DatabaseUnavailable(StressError):
    """PostgreSQL does not answer."""


@dataclass
class StressReport:
    """What a run found. ``failures`` is empty when it is clean."""

    data: dict[str, t.Any]
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def render(self) -> str:
        return render(self)


# Lines of the server's output, by what they reveal; see scan_server_output.
STDERR_PROBLEMS: dict[str, re.Pattern[str]] = {
    "non-checked-in connection": re.compile(r"non-checked-in connection"),
    "SAWarning": re.compile(r"\bSAWarning\b"),
    "other warnings": re.compile(r"\b(?!SAWarning\b)\w*Warning: "),
    "tracebacks": re.compile(r"^Traceback \(most recent call last\)"),
    "error log lines": re.compile(r"^(ERROR|CRITICAL) |\[(ERROR|CRITICAL)\]"),
    "warning log lines": re.compile(r"^WARNING |\[WARNING\]"),
    "exception ignored": re.compile(r"^Exception ignored"),
    "task destroyed": re.compile(r"Task was destroyed but it is pending"),
    "never retrieved": re.compile(r"exception was never retrieved"),
}


# asyncpg (0.32) with sslmode=prefer, its default: cancelling a connect while its SSL probe
# is under way leaves a future whose ConnectionError nobody retrieves, so asyncio logs it.
# Nothing leaks; it is reported apart (see stress/README.md), not counted as a problem.
KNOWN_ASYNCPG_BLOCK = "unexpected connection_lost() call"


def scan_server_output(output: str) -> dict[str, t.Any]:
    """Count the server's output lines that reveal a problem, with the first few of them."""
    counts = dict.fromkeys(STDERR_PROBLEMS, 0)
    samples: list[str] = []
    known = 0
    lines = output.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if "Future exception was never retrieved" in line and KNOWN_ASYNCPG_BLOCK in following:
            # The block ends with the exception's own line (after a traceback, if any).
            end = index + 1
            while end + 1 < len(lines) and end - index < 60:
                end += 1
                if lines[end].startswith("ConnectionError: " + KNOWN_ASYNCPG_BLOCK):
                    break
            known += 1
            index = end + 1
            continue
        hit = False
        for name, pattern in STDERR_PROBLEMS.items():
            if pattern.search(line):
                counts[name] += 1
                hit = True
        if hit and len(samples) < 10:
            samples.append(line[:300])
        index += 1
    return {
        "lines": len(lines),
        "problems": counts,
        "samples": samples,
        "known_asyncpg_cancelled_connect": known,
    }


def asyncpg_url(url: str | None = None) -> str:
    """*url* (default: ``ASSE_POSTGRES_URL``) with the asyncpg driver."""
    parsed = make_url(url or os.environ.get("ASSE_POSTGRES_URL", DEFAULT_URL))
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("quart", "hypercorn", "sqlalchemy", "asyncpg", "httpx"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "missing"
    return found


def stop_server(proc: subprocess.Popen[bytes]) -> dict[str, t.Any]:
    """Stop the server: SIGTERM (graceful: after_serving runs), then SIGKILL after a bound."""
    if proc.poll() is not None:
        return {"how": "exited by itself", "returncode": proc.returncode, "seconds": 0.0}
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(TERMINATE_TIMEOUT)
        how = "terminated"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(KILL_TIMEOUT)
        how = "killed"
    return {"how": how, "returncode": proc.returncode, "seconds": time.monotonic() - start}


def mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


class StressRun:
    """One run: start the server, load it, let it settle, check, stop it."""

    def __init__(self, config: StressConfig) -> None:
        self.config = config
        token = uuid.uuid4().hex[:12]
        self.application_name = f"asse-stress-{token}"
        self.table = f"asse_stress_{token}"
        self.planned = plan(config.requests, config.seed)
        self.outcomes: dict[int, Outcome] = {}
        self.port = 0
        self.samples: list[dict[str, t.Any]] = []
        self.sample_errors: list[str] = []
        self.warm: dict[str, t.Any] | None = None
        self.warm_trimmed: dict[str, t.Any] | None = None
        self.warm_at = max(1, config.requests // 10)
        self.warmed = asyncio.Event()
        self.data: dict[str, t.Any] = {}
        self.cleanup_errors: list[str] = []
        self.failures: list[str] = []
        self.monitor = create_async_engine(
            config.url,
            poolclass=NullPool,
            connect_args={
                "timeout": 5,
                "server_settings": {"application_name": f"{self.application_name}-monitor"},
            },
        )

    # --- PostgreSQL, seen from the parent ---

    async def check_database(self) -> None:
        try:
            async with asyncio.timeout(STATS_TIMEOUT), self.monitor.connect() as conn:
                await conn.execute(text("select 1"))
        except (OSError, SQLAlchemyError, TimeoutError) as error:
            raise DatabaseUnavailable(
                f"PostgreSQL at {shown_url(self.config.url)} does not answer: {error}"
            ) from error

    async def backend_states(self) -> dict[str, int]:
        """The server's PostgreSQL backends (by application_name), counted by state."""
        async with asyncio.timeout(STATS_TIMEOUT), self.monitor.connect() as conn:
            rows = await conn.execute(
                text(
                    "select coalesce(state, 'unknown'), count(*) from pg_stat_activity"
                    " where application_name = :name group by 1"
                ),
                {"name": self.application_name},
            )
            return {str(state): int(count) for state, count in rows}

    async def table_rows(self) -> list[tuple[int, bool]]:
        async with asyncio.timeout(STATS_TIMEOUT), self.monitor.connect() as conn:
            rows = await conn.execute(text(f'select req, committed from "{self.table}"'))
            return [(int(req), bool(committed)) for req, committed in rows]

    async def drop_table_if_left(self) -> bool:
        """Drop the table if the server did not; return whether it was still there."""
        async with asyncio.timeout(STATS_TIMEOUT), self.monitor.begin() as conn:
            left = await conn.scalar(text("select to_regclass(:name)"), {"name": self.table})
            if left is not None:
                await conn.execute(text("set local lock_timeout = '5s'"))
                await conn.execute(text(f'drop table if exists "{self.table}"'))
            return left is not None

    # --- the server process ---

    def start_server(self, listener: socket.socket, log: t.IO[bytes]) -> subprocess.Popen[bytes]:
        config = self.config
        command = [
            sys.executable,
            "-m",
            "stress.quart_stress",
            "--serve",
            "--fd",
            str(listener.fileno()),
            "--url",
            config.url,
            "--app-name",
            self.application_name,
            "--table",
            self.table,
            "--pool-size",
            str(config.pool_size),
            "--max-overflow",
            str(config.max_overflow),
        ]
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=[listener.fileno()],
        )

    async def stats(
        self, client: httpx.AsyncClient, *, collect: bool = False, trim: bool = False
    ) -> dict[str, t.Any]:
        """The server's /stats: after gc.collect() with *collect*, malloc_trim with *trim*."""
        params = {"gc": "1" if collect else "0", "trim": "1" if trim else "0"}
        response = await client.get("/stats", params=params)
        response.raise_for_status()
        return t.cast(dict[str, t.Any], response.json())

    async def wait_ready(self, client: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise StressError(f"the server exited with status {proc.returncode} at startup")
            try:
                await client.get("/stats", timeout=1.0)
                return
            except httpx.HTTPError as error:
                if time.monotonic() >= deadline:
                    raise StressError(
                        f"the server did not answer within {STARTUP_TIMEOUT:.0f} s: {error!r}"
                    ) from error
            await asyncio.sleep(0.1)

    # --- the load ---

    def record(self, item: Planned, result: str, start: float, detail: str = "") -> None:
        expected = result in EXPECTED[item.kind]
        seconds = time.perf_counter() - start
        self.outcomes[item.n] = Outcome(item.n, item.kind, result, expected, seconds, detail)
        if len(self.outcomes) == self.warm_at:
            self.warmed.set()

    async def send_http(self, client: httpx.AsyncClient, item: Planned) -> tuple[str, str]:
        params = {
            "n": str(item.n),
            "sleep": f"{item.sleep:.3f}",
            "commit": "1" if item.commit else "0",
            "fault": item.fault,
        }
        timeout = item.client_timeout or self.config.request_timeout
        try:
            response = await client.get("/work", params=params, timeout=timeout)
        except httpx.TimeoutException as error:
            result = CLIENT_TIMEOUT if item.kind == TIMEOUT else REQUEST_TIMEOUT
            return result, type(error).__name__
        except httpx.TransportError as error:
            return CONNECTION_ERROR, f"{type(error).__name__}: {error}"
        if response.status_code != 200:
            return str(response.status_code), response.text[:200]
        try:
            body = response.json()
        except ValueError:
            return BAD_BODY, response.text[:200]
        wanted = {"n": item.n, "payload": f"request {item.n}", "same": True}
        if {key: body.get(key) for key in wanted} != wanted or body.get("committed") != (
            item.commit
        ):
            return BAD_BODY, json.dumps(body)[:200]
        return OK_200, ""

    async def send_and_hang_up(self, item: Planned) -> tuple[str, str]:
        """Send the request on a raw socket and close it mid-query (FIN or reset)."""
        path = f"/work?n={item.n}&sleep={item.sleep:.3f}&commit=0&fault="
        head = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nConnection: close\r\n\r\n"
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.port), self.config.request_timeout
            )
        except (OSError, TimeoutError) as error:
            return CONNECTION_ERROR, f"{type(error).__name__}: {error}"
        try:
            writer.write(head.encode("ascii"))
            await writer.drain()
            await asyncio.sleep(item.close_after)
        except OSError as error:
            return CONNECTION_ERROR, f"{type(error).__name__}: {error}"
        finally:
            if item.reset:
                sock = writer.get_extra_info("socket")
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return DISCONNECTED, "reset" if item.reset else "fin"

    async def send(self, client: httpx.AsyncClient, item: Planned) -> None:
        start = time.perf_counter()
        try:
            if item.kind == DISCONNECT:
                result, detail = await self.send_and_hang_up(item)
            else:
                result, detail = await self.send_http(client, item)
        except asyncio.CancelledError:
            self.record(item, DEADLINE, start)
            raise
        self.record(item, result, start, detail)

    async def load(self, client: httpx.AsyncClient) -> tuple[float, bool]:
        """Send every planned request, *concurrency* at a time; (seconds, deadline hit)."""
        items = iter(self.planned)

        async def worker() -> None:
            for item in items:
                await self.send(client, item)

        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            async with asyncio.timeout_at(loop.time() + self.config.max_seconds):
                await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))
        except TimeoutError:
            return time.perf_counter() - start, True
        return time.perf_counter() - start, False

    async def sample(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Every ``sample_interval`` s: the server's /stats and its backends' count."""
        start = time.perf_counter()
        while not stop.is_set():
            try:
                stats = await self.stats(client)
                states = await self.backend_states()
                self.samples.append(
                    {
                        "t": round(time.perf_counter() - start, 2),
                        "rss_kb": stats["rss_kb"],
                        "registry": stats["registry"],
                        "checked_out": stats["checked_out"],
                        "backends": sum(states.values()),
                    }
                )
            except (httpx.HTTPError, SQLAlchemyError, OSError, TimeoutError) as error:
                self.sample_errors.append(repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.sample_interval)

    async def sample_warm(self, client: httpx.AsyncClient) -> None:
        await self.warmed.wait()
        try:
            self.warm = await self.stats(client, collect=True)
            self.warm["after_requests"] = len(self.outcomes)
            self.warm_trimmed = await self.stats(client, trim=True)
        except httpx.HTTPError as error:
            self.sample_errors.append(f"warm-up sample: {error!r}")

    async def settle(self, client: httpx.AsyncClient) -> dict[str, t.Any]:
        """Poll until nothing is held any more (at most ``settle_seconds``); the last look."""
        start = time.monotonic()
        while True:
            stats = await self.stats(client)
            states = await self.backend_states()
            busy = {state: count for state, count in states.items() if state != "idle"}
            clean = (
                stats["registry"] == 0
                and stats["checked_out"] == 0
                and not busy
                and states.get("idle", 0) <= self.config.pool_size
            )
            waited = time.monotonic() - start
            if clean or waited >= self.config.settle_seconds:
                break
            await asyncio.sleep(0.25)
        end = await self.stats(client, collect=True)
        end_trimmed = await self.stats(client, trim=True)
        return {
            "settled": clean,
            "seconds": round(waited, 2),
            "registry": stats["registry"],
            "checked_out": stats["checked_out"],
            "backend_states": states,
            "registry_after_gc": end["registry"],
            "end": end,
            "end_trimmed": end_trimmed,
        }

    async def backends_after_shutdown(self) -> int:
        deadline = time.monotonic() + SHUTDOWN_BACKENDS_TIMEOUT
        while True:
            left = sum((await self.backend_states()).values())
            if left == 0 or time.monotonic() >= deadline:
                return left
            await asyncio.sleep(0.25)

    # --- the whole run ---

    async def execute(self) -> StressReport:
        config = self.config
        started = time.monotonic()
        try:
            await self.check_database()
            with contextlib.ExitStack() as stack:
                if config.server_log is not None:
                    log_path = config.server_log
                else:
                    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="asse-stress-"))
                    log_path = Path(tmp) / "server.log"
                log = stack.enter_context(log_path.open("wb"))
                await self.serve_and_measure(log)
                output = log_path.read_text(encoding="utf-8", errors="replace")
            self.data["server_output"] = scan_server_output(output)
            if config.server_log is not None:
                self.data["server_output"]["path"] = str(config.server_log)
        finally:
            await self.monitor.dispose()
        self.data["runtime_seconds"] = round(time.monotonic() - started, 2)
        return self.report()

    async def serve_and_measure(self, log: t.IO[bytes]) -> None:
        config = self.config
        with socket.create_server((HOST, 0), backlog=1024) as listener:
            self.port = listener.getsockname()[1]
            proc = self.start_server(listener, log)
        # The server holds the listening socket now; ours is closed.
        base_url = f"http://{HOST}:{self.port}"
        room = config.concurrency + 8
        load_client = httpx.AsyncClient(
            base_url=base_url,
            timeout=config.request_timeout,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=room,
                max_keepalive_connections=room,
                keepalive_expiry=CLIENT_KEEP_ALIVE,
            ),
        )
        stats_client = httpx.AsyncClient(
            base_url=base_url,
            timeout=STATS_TIMEOUT,
            trust_env=False,
            limits=httpx.Limits(keepalive_expiry=CLIENT_KEEP_ALIVE),
        )
        try:
            async with load_client, stats_client:
                try:
                    await self.wait_ready(stats_client, proc)
                except StressError as error:
                    log.flush()
                    raise StressError(f"{error}\n{self.log_tail(log)}") from error
                stop = asyncio.Event()
                sampler = asyncio.create_task(self.sample(stats_client, stop))
                warm = asyncio.create_task(self.sample_warm(stats_client))
                try:
                    seconds, deadline_hit = await self.load(load_client)
                finally:
                    stop.set()
                    warm.cancel()
                    await asyncio.gather(sampler, warm, return_exceptions=True)
                self.data["load"] = {"seconds": seconds, "deadline_hit": deadline_hit}
                try:
                    self.data["settle"] = await self.settle(stats_client)
                    self.data["rows"] = await self.table_rows()
                except (httpx.HTTPError, SQLAlchemyError, OSError, TimeoutError) as error:
                    log.flush()
                    died = "" if proc.poll() is None else f" (the server died: {proc.returncode})"
                    raise StressError(
                        f"the checks after the load failed{died}: {error!r}\n{self.log_tail(log)}"
                    ) from error
        finally:
            # Each step runs even if an earlier one fails; a failure shows up as None.
            self.data["server_stop"] = await asyncio.to_thread(stop_server, proc)
            self.data["backends_after_shutdown"] = await self.cleanup_step(
                self.backends_after_shutdown()
            )
            self.data["table_left_by_server"] = await self.cleanup_step(self.drop_table_if_left())

    async def cleanup_step(self, step: cabc.Awaitable[_T]) -> _T | None:
        try:
            return await step
        except (SQLAlchemyError, OSError, TimeoutError) as error:
            self.cleanup_errors.append(repr(error))
            return None

    @staticmethod
    def log_tail(log: t.IO[bytes]) -> str:
        try:
            text_ = Path(log.name).read_text(encoding="utf-8", errors="replace")
        except (OSError, TypeError):
            return ""
        return "server output (last lines):\n" + "\n".join(text_.splitlines()[-30:])

    # --- the verdict ---

    def report(self) -> StressReport:
        config, data, failures = self.config, self.data, self.failures
        outcomes = [self.outcomes[n] for n in sorted(self.outcomes)]
        load = data["load"]
        sent = len(outcomes)
        not_sent = config.requests - sent
        by_kind: dict[str, dict[str, int]] = {}
        for kind in MIX:
            counter = collections.Counter(o.result for o in outcomes if o.kind == kind)
            by_kind[kind] = {"planned": sum(1 for p in self.planned if p.kind == kind)}
            by_kind[kind].update(sorted(counter.items()))
        statuses = collections.Counter(o.result for o in outcomes if o.result.isdigit())
        results = collections.Counter(o.result for o in outcomes)
        unexpected = [o for o in outcomes if not o.expected]
        ok_seconds = sorted(o.seconds for o in outcomes if o.result == OK_200)
        errors = {
            "client timeouts (intended)": results[CLIENT_TIMEOUT],
            "disconnects (intended)": results[DISCONNECTED],
            "500s (intended)": sum(
                1 for o in outcomes if o.result == ERROR_500 and o.kind == RAISE
            ),
            "500s (unintended)": sum(
                1 for o in outcomes if o.result == ERROR_500 and o.kind != RAISE
            ),
            "other statuses": sum(n for s, n in statuses.items() if s not in {OK_200, ERROR_500}),
            "request timeouts": results[REQUEST_TIMEOUT],
            "connection errors": results[CONNECTION_ERROR],
            "bad bodies": results[BAD_BODY],
            "cut by the deadline": results[DEADLINE],
        }
        data["config"] = {
            **{k: v for k, v in asdict(config).items() if k not in {"url", "server_log"}},
            "url": shown_url(config.url),
            "application_name": self.application_name,
            "table": self.table,
        }
        data["versions"] = versions()
        data["requests"] = {
            "planned": config.requests,
            "sent": sent,
            "not_sent": not_sent,
            "expected": sent - len(unexpected),
            "unexpected": len(unexpected),
            "seconds": round(load["seconds"], 2),
            "per_second": round(sent / load["seconds"], 1) if load["seconds"] else None,
            "by_status": dict(sorted(statuses.items())),
            "by_kind": by_kind,
            "errors": errors,
            "latency_ms_200": {
                "p50": round(1000 * statistics.median(ok_seconds), 1) if ok_seconds else None,
                "p95": round(1000 * ok_seconds[int(0.95 * (len(ok_seconds) - 1))], 1)
                if ok_seconds
                else None,
                "max": round(1000 * ok_seconds[-1], 1) if ok_seconds else None,
            },
            "unexpected_samples": [asdict(o) for o in unexpected[:20]],
        }
        if not_sent:
            failures.append(f"{not_sent} requests were never sent (--max-seconds ran out)")
        if unexpected:
            kinds = collections.Counter(f"{o.kind} -> {o.result}" for o in unexpected)
            failures.append(f"{len(unexpected)} unexpected outcomes: {dict(kinds)}")

        # Leaks.
        settle = data["settle"]
        states: dict[str, int] = settle["backend_states"]
        end_stats = settle["end"]
        server_counters: dict[str, int] = end_stats["counters"]
        data["server_counters"] = server_counters
        rows: list[tuple[int, bool]] = data.pop("rows")
        committed_expected = {
            o.n for o in outcomes if o.result == OK_200 and self.planned[o.n].commit
        }
        committed_found = [req for req, committed in rows if committed]
        uncommitted_found = [req for req, committed in rows if not committed]
        pool_limit = config.pool_size + config.max_overflow
        max_backends = max((s["backends"] for s in self.samples), default=0)
        output = data["server_output"]["problems"]
        stop = data["server_stop"]
        in_transaction = sum(n for s, n in states.items() if s.startswith("idle in transaction"))
        idle, active = states.get("idle", 0), states.get("active", 0)
        other_states = sum(states.values()) - idle - active - in_transaction
        after_shutdown = data["backends_after_shutdown"]
        unexpected_exceptions = server_counters.get("unexpected_exception", 0)
        leaks: list[tuple[str, object, str, bool]] = [
            ("pool checked out", settle["checked_out"], "0", settle["checked_out"] == 0),
            ("sessions in the registry", settle["registry"], "0", settle["registry"] == 0),
            ("  after gc.collect()", settle["registry_after_gc"], "0",
             settle["registry_after_gc"] == 0),
            ("backends active", active, "0", active == 0),
            ("backends idle in transaction", in_transaction, "0", in_transaction == 0),
            ("backends in other states", other_states, "0", other_states == 0),
            ("backends idle", idle, f"<= {config.pool_size}", idle <= config.pool_size),
            ("backends max during the run", max_backends, f"<= {pool_limit}",
             max_backends <= pool_limit),
            ("backends after shutdown", after_shutdown, "0", after_shutdown == 0),
            ("table dropped", "yes" if data["table_left_by_server"] is not None else "unknown",
             "yes", data["table_left_by_server"] is not None),
            ("uncommitted rows visible", len(uncommitted_found), "0", not uncommitted_found),
            ("committed rows", len(committed_found), f"== {len(committed_expected)}",
             sorted(committed_found) == sorted(committed_expected)),
            *((f"server output: {name}", count, "0", count == 0) for name, count in output.items()),
            ("server unexpected exceptions", unexpected_exceptions, "0",
             unexpected_exceptions == 0),
            ("server stopped by SIGTERM", stop["how"], "terminated", stop["how"] == "terminated"),
        ]  # fmt: skip
        failures.extend(f"cleanup failed: {error}" for error in self.cleanup_errors)
        data["leaks"] = {
            "settled": settle["settled"],
            "settle_seconds": settle["seconds"],
            "checks": [
                {"check": name, "value": value, "limit": limit, "ok": ok}
                for name, value, limit, ok in leaks
            ],
            "backend_states": states,
            "rows": {
                "committed": len(committed_found),
                "committed_expected": len(committed_expected),
                "missing": sorted(committed_expected - set(committed_found))[:20],
                "unexpected": sorted(set(committed_found) - committed_expected)[:20],
                "uncommitted": sorted(uncommitted_found)[:20],
            },
        }
        for name, value, limit, ok in leaks:
            if not ok:
                failures.append(f"leak check failed: {name.strip()} = {value} (want {limit})")

        # Memory.
        warm_kb = None if self.warm is None else self.warm["rss_kb"]
        end_kb = end_stats["rss_kb"]
        sampled = [s["rss_kb"] for s in self.samples if s["rss_kb"] is not None]
        growth = None if warm_kb is None or end_kb is None else (end_kb - warm_kb) / 1024
        trimmed = self.warm_trimmed is not None and bool(self.warm_trimmed["trimmed"])
        warm_trim_kb = self.warm_trimmed["rss_kb"] if trimmed and self.warm_trimmed else None
        end_trim_kb = settle["end_trimmed"]["rss_kb"] if trimmed else None
        trimmed_growth = (
            None
            if warm_trim_kb is None or end_trim_kb is None
            else (end_trim_kb - warm_trim_kb) / 1024
        )
        data["memory"] = {
            "rss_mb_after_warmup": mb(warm_kb),
            "warmup_requests": None if self.warm is None else self.warm["after_requests"],
            "rss_mb_end": mb(end_kb),
            "growth_mb": growth,
            "rss_mb_max_sampled": mb(max(sampled)) if sampled else None,
            "rss_mb_after_warmup_trimmed": mb(warm_trim_kb),
            "rss_mb_end_trimmed": mb(end_trim_kb),
            "growth_mb_trimmed": trimmed_growth,
            "samples": len(self.samples),
            "sample_errors": self.sample_errors[:10],
            "max_registry_sampled": max((s["registry"] for s in self.samples), default=0),
        }
        data["samples"] = self.samples
        judged = trimmed_growth if trimmed_growth is not None else growth
        if config.max_growth_mb is not None and judged is not None:
            if judged > config.max_growth_mb:
                failures.append(
                    f"server RSS grew by {judged:.1f} MB (more than --max-growth-mb"
                    f" {config.max_growth_mb})"
                )
        data["ok"] = not failures
        data["failures"] = failures
        return StressReport(data, failures)


def render(report: StressReport) -> str:
    """The human-readable report."""
    data = report.data
    config, requests, memory = data["config"], data["requests"], data["memory"]
    lines = [
        f"Quart on hypercorn (subprocess) + async_scoped_session on {config['url']} (asyncpg)",
        f"{config['requests']} requests, concurrency {config['concurrency']},"
        f" seed {config['seed']}, pool {config['pool_size']}+{config['max_overflow']},"
        f" max {config['max_seconds']:g} s; application_name {config['application_name']}",
        "  ".join(f"{name} {version}" for name, version in data["versions"].items()),
        "",
        f"requests: {requests['sent']} sent of {requests['planned']} ({requests['not_sent']}"
        f" not sent) in {requests['seconds']:.1f} s = {requests['per_second']} req/s;"
        f" {requests['expected']} expected outcomes, {requests['unexpected']} unexpected",
    ]
    results = sorted({r for counts in requests["by_kind"].values() for r in counts} - {"planned"})
    header = f"  {'kind':<11}{'planned':>8}" + "".join(f"{r:>16}" for r in results)
    lines.append(header)
    for kind, counts in requests["by_kind"].items():
        cells = "".join(f"{counts.get(r, 0):>16}" for r in results)
        lines.append(f"  {kind:<11}{counts['planned']:>8}{cells}")
    lines.append(
        "responses by status: "
        + (", ".join(f"{s}: {n}" for s, n in requests["by_status"].items()) or "none")
    )
    lines.append("errors by kind:")
    lines.extend(f"  {name:<28}{count:>8}" for name, count in requests["errors"].items())
    latency = requests["latency_ms_200"]
    lines.append(
        f"latency of 200s: p50 {latency['p50']} ms, p95 {latency['p95']} ms,"
        f" max {latency['max']} ms"
    )
    lines.append(
        "server handlers: "
        + ", ".join(f"{k} {v}" for k, v in sorted(data["server_counters"].items()))
    )
    for sample in requests["unexpected_samples"][:10]:
        lines.append(
            f"  unexpected: #{sample['n']} {sample['kind']} -> {sample['result']}"
            f" {sample['detail']!r}"
        )
    leaks = data["leaks"]
    lines += [
        "",
        f"leaks (settled: {'yes' if leaks['settled'] else 'NO'}, after {leaks['settle_seconds']}"
        f" s; backend states {leaks['backend_states'] or '{}'}):",
    ]
    for check in leaks["checks"]:
        verdict = "ok" if check["ok"] else "LEAK"
        lines.append(f"  {check['check']:<42}{check['value']!s:>12}  {check['limit']:<12}{verdict}")
    for sample in data["server_output"]["samples"]:
        lines.append(f"  server: {sample}")
    known = data["server_output"]["known_asyncpg_cancelled_connect"]
    if known:
        lines.append(
            f"  not counted: {known} x asyncpg 'Future exception was never retrieved ..."
            f" {KNOWN_ASYNCPG_BLOCK}' (a cancelled connect; see stress/README.md)"
        )

    def show(value: float | None, sign: bool = False) -> str:
        return "n/a" if value is None else f"{value:+.1f} MB" if sign else f"{value:.1f} MB"

    lines += [
        "",
        "memory (server RSS):",
        f"  {'after warm-up (' + str(memory['warmup_requests']) + ' requests, gc)':<40}"
        f"{show(memory['rss_mb_after_warmup'])}",
        f"  {'at the end (settled, gc)':<40}{show(memory['rss_mb_end'])}",
        f"  {'growth':<40}{show(memory['growth_mb'], sign=True)}",
        f"  {'after warm-up, gc + malloc_trim(0)':<40}"
        f"{show(memory['rss_mb_after_warmup_trimmed'])}",
        f"  {'at the end, gc + malloc_trim(0)':<40}{show(memory['rss_mb_end_trimmed'])}",
        f"  {'growth after malloc_trim(0)':<40}{show(memory['growth_mb_trimmed'], sign=True)}",
        f"  {'max sampled (' + str(memory['samples']) + ' samples)':<40}"
        f"{show(memory['rss_mb_max_sampled'])}",
        f"  {'max sessions registered at a sample':<40}{memory['max_registry_sampled']}",
    ]
    if memory["sample_errors"]:
        lines.append(f"  sample errors: {memory['sample_errors']}")
    stop = data["server_stop"]
    left = data["table_left_by_server"]
    table_by_server = "unknown" if left is None else "no (dropped now)" if left else "yes"
    lines += [
        "",
        f"server stop: {stop['how']} (status {stop['returncode']}) in {stop['seconds']:.1f} s;"
        f" table dropped by the server: {table_by_server}",
        f"runtime: {data['runtime_seconds']:.1f} s",
        "",
    ]
    if report.ok:
        lines.append("RESULT: OK (no leaks, every outcome expected)")
    else:
        lines.append("RESULT: FAILED")
        lines.extend(f"  - {failure}" for failure in report.failures)
    return "\n".join(lines)


async def run_stress(config: StressConfig) -> StressReport:
    """Run the stress test described by *config*; raises :class:`StressError` if it cannot."""
    return await StressRun(config).execute()


# --- main -----------------------------------------------------------------------------------


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {number}")
    return number


def parse_args(argv: cabc.Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stress.quart_stress",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    run = parser.add_argument_group("the run")
    run.add_argument("--requests", type=positive, default=5000, help="requests (5000)")
    run.add_argument("--concurrency", type=positive, default=32, help="in flight at once (32)")
    run.add_argument("--seed", type=int, default=1, help="seed of the request mix (1)")
    run.add_argument(
        "--max-seconds", type=positive_float, default=300.0, help="bound of the load phase (300)"
    )
    run.add_argument(
        "--request-timeout", type=positive_float, default=30.0, help="per request (30 s)"
    )
    run.add_argument(
        "--settle-seconds", type=positive_float, default=10.0, help="settle bound (10 s)"
    )
    run.add_argument(
        "--sample-interval", type=positive_float, default=2.0, help="/stats sampling (2 s)"
    )
    run.add_argument(
        "--max-growth-mb",
        type=float,
        help="fail when the server's RSS grows by more (after malloc_trim where possible)",
    )
    run.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    run.add_argument("--server-log", type=Path, metavar="PATH", help="keep the server's output")
    both = parser.add_argument_group("the server (also with --serve)")
    both.add_argument("--url", help="PostgreSQL URL (default: ASSE_POSTGRES_URL, with asyncpg)")
    both.add_argument("--pool-size", type=positive, default=10, help="engine pool_size (10)")
    both.add_argument("--max-overflow", type=int, default=10, help="engine max_overflow (10)")
    serve = parser.add_argument_group("serve mode (used by the run itself)")
    serve.add_argument("--serve", action="store_true", help="serve the app until SIGTERM")
    serve.add_argument("--fd", type=int, help="a listening socket's file descriptor")
    serve.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 without --fd")
    serve.add_argument("--app-name", default="asse-stress", help="PostgreSQL application_name")
    serve.add_argument("--table", default="asse_stress_rows", help="the app's table (dropped)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", args.table):
        parser.error("--table must be a plain lower-case SQL identifier")
    return args


def main(argv: cabc.Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve_main(args)
    config = StressConfig(
        url=asyncpg_url(args.url),
        requests=args.requests,
        concurrency=args.concurrency,
        seed=args.seed,
        max_seconds=args.max_seconds,
        request_timeout=args.request_timeout,
        pool_size=args.pool_size,
        max_overflow=args.max_overflow,
        settle_seconds=args.settle_seconds,
        sample_interval=args.sample_interval,
        max_growth_mb=args.max_growth_mb,
        server_log=args.server_log,
    )
    try:
        report = asyncio.run(run_stress(config))
    except DatabaseUnavailable as error:
        print(f"{error}{'' if args.url else ' (ASSE_POSTGRES_URL)'}", file=sys.stderr)
        return 2
    except StressError as error:
        print(f"stress run failed: {error}", file=sys.stderr)
        return 1
    print(report.render())
    if args.json is not None:
        args.json.write_text(json.dumps(report.data, indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.json}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
