"""What pooled connections and forgotten app contexts keep alive (DESIGN fact 10).

``python -m bench.pinned_contexts`` (from the repository root; needs PostgreSQL, from
``ASSE_POSTGRES_URL``). Each scenario runs in a new interpreter, so that one's memory does not
show in another's RSS:

* ``flask-requests`` / ``quart-requests``: 1,000 requests (8 at a time) to an app whose async
  view puts 1 MB on ``g`` and runs ``select 1`` through ``current_session``
  (``async_scoped_session`` on asyncpg). Prints the process RSS and how many of those
  megabytes are still alive after 100 and after 1,000 requests.
* ``flask-unpopped`` / ``quart-unpopped``: 20 app contexts pushed (Quart: in a task that then
  ends; Flask: inside ``contextvars.copy_context().run``), each running a query in a
  transaction through the session, never popped. Every reference is dropped, gc runs, and the
  script counts the backends left ``idle in transaction`` and the contexts still alive.
"""

from __future__ import annotations

import argparse
import asyncio
import collections.abc as cabc
import contextvars
import gc
import logging
import os
import subprocess
import sys
import time
import typing as t
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flask import Flask, g
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from async_scoped_session_ext import async_scoped_session, current_session
from async_scoped_session_ext._runner import runner

from .db import postgres_url

REQUESTS = 1_000
CHECKPOINTS = (100, REQUESTS)
CONCURRENCY = 8
CONTEXTS = 20
APP_NAME = f"asse-bench-pinned-{os.getpid()}"


class Payload:
    """The megabyte a view puts on ``g``, counted through weak references."""

    def __init__(self) -> None:
        self.data = bytearray(1 << 20)


def rss_mb() -> float:
    """The process's resident set size in MB (``VmRSS`` in ``/proc/self/status``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


def asyncpg_url() -> str:
    url = make_url(postgres_url()).set(drivername="postgresql+asyncpg")
    return url.render_as_string(hide_password=False)


def make_engine(pool_size: int) -> AsyncEngine:
    """A pooled asyncpg engine whose backends carry this run's application_name."""
    return create_async_engine(
        asyncpg_url(),
        pool_size=pool_size,
        connect_args={"server_settings": {"application_name": APP_NAME}},
    )


def alive(refs: list[weakref.ref[t.Any]]) -> int:
    gc.collect()
    return sum(ref() is not None for ref in refs)


def report_requests(done: int, refs: list[weakref.ref[Payload]], engine: AsyncEngine) -> None:
    pooled = engine.pool.checkedin()  # type: ignore[attr-defined]
    print(
        f"  after {done:>5} requests: RSS {rss_mb():7.1f} MB,"
        f" {alive(refs):>3} of the views' 1 MB payloads alive, {pooled} connections pooled"
    )


# -- 1,000 requests ------------------------------------------------------------------------


def flask_requests() -> None:
    """Flask async views on the library's shared loop, 8 client threads."""
    engine = make_engine(pool_size=5)
    app = Flask("bench_pinned_flask")
    async_scoped_session(async_sessionmaker(engine), app)
    refs: list[weakref.ref[Payload]] = []

    @app.get("/")
    async def view() -> str:
        g.payload = Payload()
        refs.append(weakref.ref(g.payload))
        await current_session.execute(text("select 1"))
        return "ok"

    def get(_: int) -> None:
        response = app.test_client().get("/")
        if response.status_code != 200:
            raise RuntimeError(f"GET / answered {response.status_code}")

    print(f"  at start:                RSS {rss_mb():7.1f} MB")
    done = 0
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            for checkpoint in CHECKPOINTS:
                list(pool.map(get, range(checkpoint - done)))
                done = checkpoint
                report_requests(done, refs, engine)
    finally:
        runner.run(engine.dispose())


async def quart_requests() -> None:
    """A Quart app through its test client, 8 requests at a time."""
    from quart import Quart
    from quart import g as quart_g

    engine = make_engine(pool_size=5)
    app = Quart("bench_pinned_quart")
    async_scoped_session(async_sessionmaker(engine), app)
    refs: list[weakref.ref[Payload]] = []

    @app.get("/")
    async def view() -> str:
        quart_g.payload = Payload()
        refs.append(weakref.ref(quart_g.payload))
        await current_session.execute(text("select 1"))
        return "ok"

    client = app.test_client()

    async def get() -> None:
        response = await client.get("/")
        if response.status_code != 200:
            raise RuntimeError(f"GET / answered {response.status_code}")

    print(f"  at start:                RSS {rss_mb():7.1f} MB")
    done = 0
    try:
        for checkpoint in CHECKPOINTS:
            while done < checkpoint:
                batch = min(CONCURRENCY, checkpoint - done)
                await asyncio.gather(*(get() for _ in range(batch)))
                done += batch
            report_requests(done, refs, engine)
    finally:
        await engine.dispose()


# -- 20 app contexts never popped -------------------------------------------------------------


def idle_in_transaction() -> tuple[int, int]:
    """Backends ``idle in transaction`` in the database: (this run's, everyone's)."""
    url = make_url(postgres_url()).set(drivername="postgresql+psycopg")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "select application_name from pg_stat_activity"
                    " where datname = current_database() and state = 'idle in transaction'"
                )
            ).scalars()
            names = list(rows)
    finally:
        engine.dispose()
    return sum(name == APP_NAME for name in names), len(names)


def terminate_own_backends() -> None:
    """Close this run's backends, so that nothing stays idle in transaction on the server."""
    url = make_url(postgres_url()).set(drivername="postgresql+psycopg")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(
                text(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where application_name = :name"
                ),
                {"name": APP_NAME},
            )
    finally:
        engine.dispose()


class ErrorCount(logging.Handler):
    """Counts the errors SQLAlchemy's pool logs (a checked-out connection collected by gc)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def report_unpopped(contexts: list[weakref.ref[t.Any]]) -> None:
    pool_errors = ErrorCount()
    pool_logger = logging.getLogger("sqlalchemy.pool")
    pool_logger.addHandler(pool_errors)
    pool_logger.propagate = False
    gc.collect()
    time.sleep(1)  # let the server see connections closed by gc
    gc.collect()
    ours, everyone = idle_in_transaction()
    print(
        f"  {CONTEXTS} contexts never popped: {alive(contexts)} still alive,"
        f" {ours} backends idle in transaction ({everyone} in the database);"
        f" {pool_errors.count} checked-out connections dropped by gc"
    )


def flask_unpopped() -> None:
    """Flask: push an app context inside a copied Context, use the session, never pop."""
    engine = make_engine(pool_size=CONTEXTS + 5)
    app = Flask("bench_pinned_flask_unpopped")
    async_scoped_session(async_sessionmaker(engine), app)
    contexts: list[weakref.ref[t.Any]] = []

    async def query() -> None:
        await current_session.execute(text("select 1"))  # begins a transaction, left open

    def push_and_use() -> None:
        ctx = app.app_context()
        ctx.push()
        contexts.append(weakref.ref(ctx))
        runner.run(query())

    try:
        for _ in range(CONTEXTS):
            contextvars.copy_context().run(push_and_use)
        report_unpopped(contexts)
    finally:
        terminate_own_backends()


async def quart_unpopped() -> None:
    """Quart: push an app context in a task that then ends, use the session, never pop."""
    from quart import Quart

    engine = make_engine(pool_size=CONTEXTS + 5)
    app = Quart("bench_pinned_quart_unpopped")
    async_scoped_session(async_sessionmaker(engine), app)
    contexts: list[weakref.ref[t.Any]] = []

    async def push_and_use() -> None:
        ctx = app.app_context()
        await ctx.push()
        contexts.append(weakref.ref(ctx))
        await current_session.execute(text("select 1"))  # begins a transaction, left open

    try:
        for _ in range(CONTEXTS):
            await asyncio.create_task(push_and_use())
        await asyncio.sleep(0)
        gc.collect()  # the library closes what it reclaims on this loop: let the loop run
        await asyncio.sleep(1)
        report_unpopped(contexts)
    finally:
        terminate_own_backends()


SCENARIOS: dict[str, cabc.Callable[[], None]] = {
    "flask-requests": flask_requests,
    "quart-requests": lambda: asyncio.run(quart_requests()),
    "flask-unpopped": flask_unpopped,
    "quart-unpopped": lambda: asyncio.run(quart_unpopped()),
}


def main(argv: cabc.Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pinned_contexts", description=__doc__)
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        help="run only this one, in this interpreter (default: each in a new one)",
    )
    args = parser.parse_args(argv)
    if args.scenario:
        # Connections collected while checked out (counted in the unpopped scenarios) or
        # still open at exit: expected here, and one line each.
        warnings.simplefilter("ignore", ResourceWarning)
        warnings.filterwarnings("ignore", "The garbage collector is trying to clean up")
        SCENARIOS[args.scenario]()
        return
    print(f"PostgreSQL: {make_url(postgres_url()).render_as_string(hide_password=True)}")
    for name in SCENARIOS:
        print(f"{name}:", flush=True)
        subprocess.run(
            [sys.executable, "-m", "bench.pinned_contexts", "--scenario", name],
            check=True,
            cwd=Path(__file__).parent.parent,
        )


if __name__ == "__main__":
    main()
