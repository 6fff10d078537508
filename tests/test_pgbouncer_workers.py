"""Four server workers through one real PgBouncer in transaction mode (docs/scaling-out.md).

Each test serves docs/deployment.md's app with four workers whose pools could open up to 16
connections, through a PgBouncer with ``default_pool_size = 3`` in front of a fresh
database, and sends a few hundred concurrent writes and reads. The database never sees more
than three connections, every request succeeds, and with the library's preset (on
asyncpg >= 0.31) no prepared statement is left on PgBouncer's server connections. The
helpers are in ``tests/support/bouncer_workers.py``; ``pytest -s`` prints the figures.
"""

from __future__ import annotations

import asyncio
import collections
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from .support.bouncer_workers import POOL, VARIANTS, Run, behind_pgbouncer
from .support.deployment import REQUEST_TIMEOUT
from .support.environment import needs_quart
from .support.pgbouncer import require_pgbouncer

REQUESTS = 320  # half writes, half reads
CONCURRENCY = 16  # requests in flight at once
WORK = "/probe/work?sleep=0.005"  # holds a server connection for 5 ms


def _asyncpg_release() -> tuple[int, ...]:
    return tuple(int(part) for part in version("asyncpg").split(".")[:2])


class Outcome:
    """What the clients saw: requests, errors (with the first few), the workers that answered."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.workers: set[str] = set()

    def __str__(self) -> str:
        kinds = "; ".join(f"{count} x {kind}" for kind, count in self.errors.most_common(3))
        return f"{self.requests} requests, {sum(self.errors.values())} errors: {kinds or 'none'}"


async def send_load(base_url: str) -> Outcome:
    """:data:`REQUESTS` requests, :data:`CONCURRENCY` at a time; each answer is checked."""
    outcome = Outcome()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(http: httpx.AsyncClient, n: int) -> None:
        async with gate:
            outcome.requests += 1
            expected: tuple[int, str | None]
            try:
                if n % 2:
                    response = await http.get(WORK)
                    expected = (200, None)
                else:
                    response = await http.post("/todos", json={"title": f"todo {n}"})
                    expected = (201, f"todo {n}")
            except httpx.HTTPError as error:
                outcome.errors[f"{type(error).__name__}: {error}"] += 1
                return
            outcome.workers.add(response.headers.get("X-Worker-Pid", "?"))
            if response.status_code != expected[0]:
                outcome.errors[f"{response.status_code}: {response.text[:200]}"] += 1
            elif expected[1] is not None and response.json().get("title") != expected[1]:
                outcome.errors[f"wrong answer: {response.text[:200]}"] += 1

    # A new connection per request: kept-alive ones would all stay with the first worker.
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=REQUEST_TIMEOUT, trust_env=False, limits=limits
    ) as http:
        await asyncio.gather(*(one(http, n) for n in range(REQUESTS)))
    return outcome


def run_workload(name: str, tmp_path: Path, how: str = "preset") -> tuple[Run, Outcome, int]:
    """Serve *name* through a new PgBouncer, send the load; the run, the outcome, and how
    many todos the app lists afterwards."""
    binary = require_pgbouncer()
    with behind_pgbouncer(name, tmp_path, how=how, binary=binary) as run:
        outcome = asyncio.run(send_load(run.deployment.base_url))
        listed = httpx.get(f"{run.deployment.base_url}/todos", trust_env=False, timeout=20)
    print(
        f"\n{name} ({how}): {outcome}; {len(outcome.workers)} workers answered;"
        f" at most {run.client_connections} PgBouncer clients,"
        f" {run.most_servers} server connections (SHOW SERVERS at the end:"
        f" {run.servers_shown}); prepared statements left per server connection:"
        f" {run.statements}"
    )
    return run, outcome, len(listed.json())


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[needs_quart] if "quart" in name else [], id=name)
        for name in VARIANTS
    ],
)
def test_four_workers_share_three_server_connections(name: str, tmp_path: Path) -> None:
    """Four workers (up to 16 pooled connections) through PgBouncer with a pool of 3: every
    request succeeds, the database never has more than 3 connections, and no prepared
    statement is left on them."""
    run, outcome, listed = run_workload(name, tmp_path)
    assert not outcome.errors, f"{outcome}\n{run.deployment.log}"
    assert listed == REQUESTS // 2, "a write was lost"
    assert len(outcome.workers) > 1, f"only {outcome.workers} answered"
    # The app had more clients than PgBouncer has server connections ...
    assert run.client_connections > POOL, run.deployment.most_open_by_process()
    # ... and the database saw no more than the pool.
    assert 0 < run.most_servers <= POOL, run.sampler.samples
    assert 0 < run.servers_shown <= POOL
    assert len(run.statements) == POOL, run.statements
    if name != "gunicorn-gthread-flask" and _asyncpg_release() < (0, 31):
        # Every statement is named before asyncpg 0.31 (docs/pgbouncer.md, the bound).
        assert sum(run.statements.values()) > 0, run.statements
    else:
        assert sum(run.statements.values()) == 0, run.statements


@pytest.mark.slow
@needs_quart
def test_named_statements_pile_up_without_the_unnamed_path(tmp_path: Path) -> None:
    """The control: with UUID statement names (the preset on asyncpg < 0.31), asyncpg's
    statements stay prepared on PgBouncer's server connections after the workers stop."""
    run, outcome, _ = run_workload("hypercorn-quart", tmp_path, how="named")
    assert not outcome.errors, f"{outcome}\n{run.deployment.log}"
    assert 0 < run.most_servers <= POOL
    assert sum(run.statements.values()) > 0, run.statements
