"""Benchmark: Flask async views on asyncpg, the shared loop against a NullPool session per request.

Two Flask apps are served side by side, each by a threaded werkzeug server on loopback, and
both have one async view that runs ``select pg_backend_pid()`` and returns the pid:

* ``ours``: ``async_scoped_session(async_sessionmaker(create_async_engine(url)), app)`` with
  SQLAlchemy's default pool; the view awaits ``current_session.execute(...)``. The library runs
  the app's async code on its one shared event loop, so the pool is reused across requests.
* ``nullpool``: plain Flask (asgiref runs each async view on a new event loop) with
  ``create_async_engine(url, poolclass=NullPool)`` and ``async with AsyncSession(engine)`` in
  the view: the usual workaround, a new PostgreSQL connection per request.

After a warm-up, both are measured in interleaved rounds of sequential requests from one
``httpx.Client``; the order alternates every round so machine noise hits both alike. Run it
with ``python3 -m nox -s bench`` or ``python -m bench.flask_async_asyncpg --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections.abc as cabc
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from flask import Flask
from sqlalchemy import make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool, QueuePool
from werkzeug.serving import make_server

from async_scoped_session_ext import async_scoped_session, current_session

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
TIMEOUT = 10.0  # seconds: one HTTP request, one server shutdown
MIN_RATIO = 3.0  # below this, a warning line is printed (not a failure)
OURS, NULLPOOL = "ours", "nullpool"
VARIANTS = (OURS, NULLPOOL)
PID_SQL = text("select pg_backend_pid()")


def asyncpg_url() -> str:
    """The PostgreSQL URL (``ASSE_POSTGRES_URL``) with the asyncpg driver."""
    url = make_url(os.environ.get("ASSE_POSTGRES_URL", DEFAULT_URL))
    return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


# --- the two apps ---------------------------------------------------------------------------


def ours_app(url: str) -> tuple[Flask, async_scoped_session[AsyncSession], AsyncEngine]:
    """The library's way: a pooled engine, the session scoped to the app context."""
    app = Flask("bench_ours")
    engine = create_async_engine(url)
    asession = async_scoped_session(async_sessionmaker(engine), app)

    @app.get("/pid")
    async def pid() -> str:
        result = await current_session.execute(PID_SQL)
        return str(result.scalar_one())

    return app, asession, engine


def nullpool_app(url: str) -> tuple[Flask, AsyncEngine]:
    """The usual workaround: asgiref's loop per view, NullPool, a session opened in the view."""
    app = Flask("bench_nullpool")
    engine = create_async_engine(url, poolclass=NullPool)

    @app.get("/pid")
    async def pid() -> str:
        async with AsyncSession(engine) as session:
            result = await session.execute(PID_SQL)
            return str(result.scalar_one())

    return app, engine


@contextlib.contextmanager
def serving(app: Flask) -> cabc.Iterator[str]:
    """Serve *app* on a threaded werkzeug server on a free loopback port; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"werkzeug-{app.name}",
        daemon=True,
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()


# --- measuring ------------------------------------------------------------------------------


class BenchError(Exception):
    """A request failed: the numbers would mean nothing."""


@dataclass
class Variant:
    name: str
    base_url: str
    pids: set[int] = field(default_factory=set)
    requests: int = 0
    rounds: list[float] = field(default_factory=list)  # req/s per round

    def hit(self, client: httpx.Client, count: int) -> float:
        """Send *count* sequential requests; return the seconds they took."""
        url = f"{self.base_url}/pid"
        pids = self.pids
        start = time.perf_counter()
        for _ in range(count):
            response = client.get(url)
            if response.status_code != 200:
                raise BenchError(
                    f"{self.name}: GET /pid answered {response.status_code}:"
                    f" {response.text[:300]!r} (see the server's traceback above)"
                )
            try:
                pids.add(int(response.text))
            except ValueError:
                raise BenchError(
                    f"{self.name}: not a backend pid: {response.text[:300]!r}"
                ) from None
        elapsed = time.perf_counter() - start
        self.requests += count
        return elapsed

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)


def measure(
    variants: dict[str, Variant], rounds: int, requests: int, warmup: int
) -> list[tuple[str, ...]]:
    """Warm up, then run interleaved rounds; return the order each round ran in."""
    orders: list[tuple[str, ...]] = []
    with httpx.Client(timeout=TIMEOUT) as client:
        for variant in variants.values():
            variant.hit(client, warmup)
        for index in range(rounds):
            order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
            orders.append(order)
            for name in order:
                elapsed = variants[name].hit(client, requests)
                variants[name].rounds.append(requests / elapsed)
    return orders


# --- reporting ------------------------------------------------------------------------------


def pool_limit(engine: AsyncEngine) -> int | None:
    """``pool_size + max_overflow`` of a QueuePool engine (None for an unbounded overflow)."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return None
    overflow: int = pool._max_overflow
    return None if overflow < 0 else pool.size() + overflow


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("flask", "werkzeug", "asgiref", "sqlalchemy", "asyncpg", "httpx"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "missing"
    return found


def report(
    variants: dict[str, Variant],
    orders: list[tuple[str, ...]],
    args: argparse.Namespace,
    url: str,
    limit: int | None,
    checked_out: int,
) -> dict[str, t.Any]:
    ours, nullpool = variants[OURS], variants[NULLPOOL]
    ratio = ours.median / nullpool.median
    print(
        f"Flask async + asyncpg, {args.rounds} rounds x {args.requests} sequential requests"
        f" per variant (after {args.warmup} warm-up requests each)"
    )
    print(f"PostgreSQL: {shown_url(url)}")
    print("  ".join(f"{name} {version}" for name, version in versions().items()))
    print()
    print(f"{'round':>6}  {'first':<8}  {'ours req/s':>10}  {'nullpool req/s':>14}  {'ratio':>6}")
    for index, order in enumerate(orders):
        a, b = ours.rounds[index], nullpool.rounds[index]
        print(f"{index + 1:>6}  {order[0]:<8}  {a:>10.0f}  {b:>14.0f}  {a / b:>6.2f}")
    print(f"{'median':>6}  {'':<8}  {ours.median:>10.0f}  {nullpool.median:>14.0f}  {ratio:>6.2f}")
    print()
    print(f"{'variant':<9}  {'median req/s':>12}  {'ms/request':>10}  {'requests':>8}  backends")
    for variant in (ours, nullpool):
        print(
            f"{variant.name:<9}  {variant.median:>12.0f}  {1000.0 / variant.median:>10.2f}"
            f"  {variant.requests:>8}  {len(variant.pids):>8}"
        )
    print()
    limit_text = "unbounded" if limit is None else str(limit)
    print(f"ratio ours/nullpool (medians): {ratio:.2f}x")
    print(
        f"backends: ours {len(ours.pids)} (pool_size + max_overflow = {limit_text},"
        f" {checked_out} checked out at the end), nullpool {len(nullpool.pids)}"
        f" for {nullpool.requests} requests"
    )
    if ratio < MIN_RATIO:
        print(
            f"WARNING: ours/nullpool = {ratio:.2f}, below the expected {MIN_RATIO:.1f}"
            " (a busy machine? a slow or remote database? try more --rounds)"
        )
    if limit is not None and len(ours.pids) > limit:
        print(f"WARNING: ours used {len(ours.pids)} backends, more than the pool allows ({limit})")
    return {
        "config": {
            "rounds": args.rounds,
            "requests": args.requests,
            "warmup": args.warmup,
            "url": shown_url(url),
        },
        "versions": versions(),
        "orders": [list(order) for order in orders],
        "variants": {
            variant.name: {
                "rounds_req_per_s": variant.rounds,
                "median_req_per_s": variant.median,
                "ms_per_request": 1000.0 / variant.median,
                "requests": variant.requests,
                "backends": len(variant.pids),
            }
            for variant in (ours, nullpool)
        },
        "ratio_ours_over_nullpool": ratio,
        "ours_pool_limit": limit,
        "ours_checked_out_at_end": checked_out,
    }


# --- main -----------------------------------------------------------------------------------


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def parse_args(argv: cabc.Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flask_async_asyncpg",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--rounds", type=positive, default=5, help="interleaved rounds (5)")
    parser.add_argument(
        "--requests", type=positive, default=300, help="requests per variant per round (300)"
    )
    parser.add_argument(
        "--warmup", type=positive, default=50, help="warm-up requests per variant (50)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    return parser.parse_args(argv)


async def check_database(url: str) -> None:
    """Fail fast, with a clear message, when PostgreSQL does not answer."""
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 5})
    try:
        async with engine.connect() as connection:
            await connection.execute(text("select 1"))
    finally:
        await engine.dispose()


def main(argv: cabc.Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    url = asyncpg_url()
    # The dev server would log every request on stderr.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        asyncio.run(check_database(url))
    except (OSError, SQLAlchemyError) as error:
        print(
            f"PostgreSQL at {shown_url(url)} (ASSE_POSTGRES_URL) does not answer: {error}",
            file=sys.stderr,
        )
        return 2

    app_a, asession, engine_a = ours_app(url)
    app_b, engine_b = nullpool_app(url)
    try:
        with serving(app_a) as url_a, serving(app_b) as url_b:
            variants = {OURS: Variant(OURS, url_a), NULLPOOL: Variant(NULLPOOL, url_b)}
            try:
                orders = measure(variants, args.rounds, args.requests, args.warmup)
            except (BenchError, httpx.HTTPError) as error:
                print(f"benchmark failed: {error}", file=sys.stderr)
                return 1
        checked_out = engine_a.pool.checkedout() if isinstance(engine_a.pool, QueuePool) else 0
        results = report(variants, orders, args, url, pool_limit(engine_a), checked_out)
    finally:
        asyncio.run(engine_b.dispose())  # NullPool: no connection is bound to a loop
        asession.run(engine_a.dispose())  # the pool lives on the library's shared loop
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
