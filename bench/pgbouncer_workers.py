"""Four workers per server through one PgBouncer in transaction mode, loaded by wrk.

``python -m bench.pgbouncer_workers [--duration S] [--out FILE]`` from the repository root,
in the dev venv (it runs the test suite's PgBouncer and deployment helpers, so it needs the
``test`` dependency group, the ``pgbouncer`` binary and wrk); it writes
``bench/results/pgbouncer.md``. Each variant of ``tests/support/bouncer_workers.py`` is
served by four workers (docs/deployment.md's app, up to 16 pooled connections) through a new
PgBouncer with ``default_pool_size = 3`` in front of a fresh database, and loaded by wrk for
*S* seconds with 16 connections, half writes and half reads. Measured: requests, errors,
req/s, the most server connections the database had at once, and the prepared statements
left on PgBouncer's server connections afterwards. One short run, not rounds: the figures
that matter are the counts, not the speed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.support.bouncer_workers import (
    APP_POOL,
    POOL,
    VARIANTS,
    WORKERS,
    behind_pgbouncer,
    prepared_statements,
)
from tests.support.databases import connect_admin
from tests.support.deployment import RECIPES
from tests.support.pgbouncer import find_pgbouncer

from .load_servers import WRK_SCRIPT, Sample, Server, run_wrk, wrk_missing, wrk_version
from .measure import BenchError
from .report import git_revision, machine_line

OUT = Path(__file__).parent / "results" / "pgbouncer.md"
CONNECTIONS = 16
#: The runs: (variant of VARIANTS, how the app is configured, what the report calls it).
RUNS = [
    *((name, "preset", "the preset") for name in VARIANTS),
    ("hypercorn-quart", "named", "UUID names (the preset before asyncpg 0.31)"),
]
DISTRIBUTIONS = ("sqlalchemy", "asyncpg", "psycopg", "quart", "hypercorn", "flask", "gunicorn")
# Half writes, half reads; every 20th request closes its connection, so that wrk's
# connections spread over the workers (see bench/load_servers.py). done() is load_servers'.
SCRIPT = """
local count = 0
local json = {["Content-Type"] = "application/json"}
local closing = {["Content-Type"] = "application/json", ["Connection"] = "close"}
request = function()
  count = count + 1
  local headers = json
  if count % 20 == 0 then headers = closing end
  if count % 2 == 0 then
    return wrk.format("POST", "/todos", headers, '{"title": "bench"}')
  end
  return wrk.format("GET", "/probe/work?sleep=0", headers)
end
""" + WRK_SCRIPT[WRK_SCRIPT.index("done = function") :]


@dataclass
class Result:
    name: str
    how: str
    sample: Sample
    clients: int  # the most PgBouncer clients (pooled connections of all workers) at once
    most_servers: int  # the most server connections the database had at once
    midway: dict[int, int]  # server connection pid -> prepared statements, halfway through
    statements: dict[int, int]  # server connection pid -> prepared statements left


def run_one(name: str, how: str, seconds: float, binary: str, tmp: Path) -> Result:
    """Serve *name* through a new PgBouncer, load it with wrk; the figures."""
    script = tmp / "pgbouncer.lua"
    script.write_text(SCRIPT)
    midway: dict[int, int] = {}
    with behind_pgbouncer(name, tmp, how=how, binary=binary) as run:
        assert run.deployment.server is not None
        server = Server(run.deployment.base_url, run.deployment.server, tmp / "server.log")
        # Halfway through, counted under load: when wrk stops, the requests it cuts off make
        # PgBouncer close their server connections, and their statements with them.
        timer = threading.Timer(
            seconds / 2, lambda: midway.update(prepared_statements(run.bouncer))
        )
        timer.start()
        try:
            sample = run_wrk(server, "/probe/stats", seconds, CONNECTIONS, script)
        finally:
            timer.join(seconds + 30)
    return Result(
        name, how, sample, run.client_connections, run.most_servers, midway, run.statements
    )


def server_version() -> str:
    with connect_admin() as conn:
        row = conn.execute("select version()").fetchone()
    return str(row[0]) if row else ""


def report(results: list[Result], seconds: float, took: float) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    pgbouncer = subprocess.run(
        [find_pgbouncer() or "pgbouncer", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    versions = ", ".join(f"{dist} {importlib.metadata.version(dist)}" for dist in DISTRIBUTIONS)
    lines = [
        "# Many workers through PgBouncer",
        "",
        f"Measured {now} by `python -m bench.pgbouncer_workers` at commit {git_revision()}:"
        f" {wrk_version()}, {CONNECTIONS} connections from one wrk thread, **one short run of"
        f" {seconds:g} s per variant** (no warm-up, no rounds); run time {took:.0f} s. This is"
        " a shared 2-core machine with wrk, the servers, PgBouncer and PostgreSQL on it: the"
        " req/s are indicative only. The counts are the point.",
        "",
        f"Machine: {machine_line(server_version())}. {pgbouncer}, `pool_mode = transaction`,"
        f" `default_pool_size = {POOL}`. Python {platform.python_version()}, {versions}.",
        "",
        f"Each server runs {WORKERS} workers of docs/deployment.md's app"
        f" (`tests/support/deploy_probes.py`), each with `pool_size={APP_POOL[0]}`,"
        f" `max_overflow={APP_POOL[1]}`: up to {WORKERS * sum(APP_POOL)} PgBouncer clients."
        " Half the requests insert a row (`POST /todos`), half run `select pg_sleep(0)`.",
        "",
        "| server | app | engine options | requests | errors | req/s | p99 ms"
        " | PgBouncer clients at most | server connections at most"
        " | prepared statements halfway (per server connection) | left at the end |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    labels = {how: label for _, how, label in RUNS}
    for result in results:
        recipe, app = VARIANTS[result.name]
        command = RECIPES[recipe].split(" -b")[0].format(workers=WORKERS)
        sample = result.sample
        errors = sample.failed + sample.socket_errors
        midway = sum(result.midway.values())
        per_connection = " / ".join(str(count) for count in result.midway.values())
        lines.append(
            f"| `{command}` | {app} | {labels[result.how]} | {sample.requests:,} | {errors}"
            f" | {sample.rate:,.0f} | {sample.p99 * 1000:.1f} | {result.clients}"
            f" | {result.most_servers} | {midway:,} ({per_connection})"
            f" | {sum(result.statements.values()):,} |"
        )
    lines += [
        "",
        "Server connections: the most backends of the run's database in `pg_stat_activity`,"
        " counted every 20 ms from before the server started until after it stopped."
        " Prepared statements: three transactions held open at once through PgBouncer, each"
        " on a server connection of its own, counted `pg_prepared_statements`: halfway through"
        " the load, and after the server stopped. At the end, wrk cuts off the requests in"
        ' flight; PgBouncer closes the server connections those requests were using ("client'
        ' disconnect while server was not ready"), so "left at the end" can be lower than'
        " what piled up. The psycopg app runs with `prepare_threshold=None`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per variant")
    parser.add_argument("--out", type=Path, default=OUT, help="the report file")
    args = parser.parse_args(argv)
    binary = find_pgbouncer()
    missing = wrk_missing() or ("" if binary else "the pgbouncer binary is not installed")
    if missing or binary is None:
        print(f"bench.pgbouncer_workers: {missing}", file=sys.stderr)
        return 2
    started = time.monotonic()
    results = []
    try:
        for name, how, label in RUNS:
            print(f"{name}, {label}: {args.duration:g} s of wrk ...", flush=True)
            with tempfile.TemporaryDirectory(prefix="asse-pgbouncer-bench-") as tmp:
                results.append(run_one(name, how, args.duration, binary, Path(tmp)))
    except BenchError as error:
        print(f"bench.pgbouncer_workers: {error}", file=sys.stderr)
        return 1
    text = report(results, args.duration, time.monotonic() - started)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
