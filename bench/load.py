"""The benchmark under load: wrk with 32 connections against gunicorn and hypercorn workers.

``python -m bench.load [--quick] [--only TEXT] [--no-postgres] [--duration S] [--rounds N]``
from the repository root; it writes ``bench/results/load.md`` (see bench/README.md, "Under
load"). The apps are the in-process benchmark's builders, served by
``bench.load_serve:app()`` in server subprocesses.
"""

from __future__ import annotations

import argparse
import collections.abc as cabc
import contextlib
import importlib.metadata
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from . import flask_async_asyncpg, quart_apps, report, sync_flask
from .db import Databases, databases, postgres_url, shown
from .drivers import http_client, http_hit
from .groups import FLASK_ASYNC_PG, QUART_PG, QUART_SQLITE, SYNC_PG, SYNC_SQLITE
from .load_serve import APP, TABLE, URL
from .load_servers import (
    LABELS,
    RECONNECT,
    SIZING,
    WRK_SCRIPT,
    Sample,
    Server,
    log_tail,
    run_wrk,
    serving,
    wait_ready,
    wrk_missing,
    wrk_version,
)
from .measure import (
    FSA,
    HAND,
    LITE,
    NULLPOOL,
    OURS,
    BenchError,
    Check,
    Group,
    Variant,
    expect,
    order,
)

OUT = Path(__file__).parent / "results" / "load.md"
CONNECTIONS = 32
CHECKED = 20  # requests whose answers are checked before and after a variant's load
SYNC_VIEW = "sync view (psycopg)"
#: ``ours ÷ variant`` throughput at least this much.
THROUGHPUT_GOALS = {HAND: 0.99, SYNC_VIEW: 0.8}
#: ``ours ÷ variant`` p99 latency at most this much.
P99_GOALS = {HAND: 1.05}
PATH = sync_flask.PATH  # every builder's one view
assert PATH == quart_apps.PATH == flask_async_asyncpg.PATH


@dataclass
class Target:
    """How one variant is served: its builder (``module:variant``), URL and expected answer."""

    app: str
    url: str
    check: Check
    samples: list[Sample] = field(default_factory=list)
    warmup_failures: str = ""  # what failed during the warm-up, if anything


@dataclass
class LoadGroup:
    """A :class:`~bench.measure.Group` served by one kind of server.

    Each round appends ``1 / req/s`` to a variant's ``seconds`` (wall time per request under
    load), so the group's per-round ``ours ÷ this`` ratios are throughput ratios.
    """

    group: Group
    server: str  # "gunicorn" or "hypercorn"
    targets: dict[str, Target]

    def p99_ratios(self, name: str) -> list[float]:
        """``ours p99 ÷ name's p99`` in each round."""
        ours, other = self.targets[OURS].samples, self.targets[name].samples
        return [a.p99 / b.p99 for a, b in zip(ours, other, strict=True)]

    def cpu_ratios(self, name: str) -> list[float]:
        """``ours' server CPU per request ÷ name's`` in each round where both are known."""
        ours, other = self.targets[OURS].samples, self.targets[name].samples
        pairs = zip(ours, other, strict=True)
        return [a.cpu / b.cpu for a, b in pairs if a.cpu is not None and b.cpu]


def _unused(count: int) -> tuple[float, float]:
    raise BenchError("load variants are driven by wrk, not by measure.run_rounds")


def _group(title: str, server: str, targets: dict[str, Target], skipped: str) -> LoadGroup:
    goals = {name: goal for name, goal in THROUGHPUT_GOALS.items() if name in targets}
    group = Group(
        title, LABELS[server], 0, [Variant(name, _unused) for name in targets], goals=goals
    )
    group.skipped = skipped
    return LoadGroup(group, server, targets)


def plan(dbs: Databases) -> list[LoadGroup]:
    """Every group, in report order; the PostgreSQL ones skipped when it is not used."""
    pg = dbs.pg_url is not None
    skipped = "" if pg else dbs.pg_skipped
    psycopg = dbs.postgresql("psycopg") if pg else ""
    asyncpg = dbs.postgresql("asyncpg") if pg else ""

    def sync(title: str, url: str, skip: str) -> LoadGroup:
        check = expect(sync_flask.BODY)
        names = (OURS, HAND, FSA, LITE)
        targets = {name: Target(f"sync_flask:{name}", url, check) for name in names}
        return _group(title, "gunicorn", targets, skip)

    def quart(title: str, url: str, skip: str) -> LoadGroup:
        check = expect(quart_apps.BODY)
        targets = {name: Target(f"quart_apps:{name}", url, check) for name in (OURS, HAND)}
        return _group(title, "hypercorn", targets, skip)

    pids = flask_async_asyncpg.pid_check(set())
    flask_async = {
        OURS: Target(f"flask_async_asyncpg:{OURS}", asyncpg, pids),
        NULLPOOL: Target(f"flask_async_asyncpg:{NULLPOOL}", asyncpg, pids),
        SYNC_VIEW: Target(f"sync_flask:{OURS}", psycopg, expect(sync_flask.BODY)),
    }
    return [
        sync(SYNC_SQLITE, dbs.sqlite(), ""),
        sync(SYNC_PG, psycopg, skipped),
        _group(FLASK_ASYNC_PG, "gunicorn", flask_async, skipped),
        quart(QUART_SQLITE, dbs.sqlite("aiosqlite"), ""),
        quart(QUART_PG, asyncpg, skipped),
    ]


def _check(server: Server, target: Target, client: httpx.Client, label: str) -> None:
    """Send :data:`CHECKED` requests and check every answer: a broken variant stops the run."""
    http_hit(client, server.url + PATH, target.check, label)(CHECKED)


def _warm_up(target: Target, server: Server, seconds: float, script: Path, label: str) -> None:
    """Load *server* unmeasured; failed responses are noted (lazy set-up), not fatal."""
    sample = run_wrk(server, PATH, seconds, CONNECTIONS, script)
    if sample.failed:
        last = log_tail(server.log, 1).strip() or "(no output)"
        target.warmup_failures = (
            f"{sample.failed:,} of {sample.requests:,} warm-up responses failed; the server's"
            f" last line: `{last}`"
        )
        print(f"  {label}: {target.warmup_failures}", flush=True)


def _measure(load: LoadGroup, name: str, server: Server, seconds: float, script: Path) -> None:
    """One measured wrk run: its sample and ``1 / req/s`` recorded; any failure stops the run."""
    sample = run_wrk(server, PATH, seconds, CONNECTIONS, script)
    if sample.failed:
        raise BenchError(
            f"{load.group.key} {name}: {sample.failed:,} of {sample.requests:,} responses"
            f" failed under load:\n{log_tail(server.log)}"
        )
    load.targets[name].samples.append(sample)
    variant = load.group.variant(name)
    assert variant is not None
    variant.seconds.append(1 / sample.rate)
    variant.requests += sample.requests


def run_group(load: LoadGroup, args: argparse.Namespace, tmp: Path, table: str) -> None:
    """Start the group's servers, check and warm them up, run its rounds; stop the servers."""
    group, script = load.group, tmp / "report.lua"
    names = list(load.targets)
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(http_client())
        servers: dict[str, Server] = {}
        for name, target in load.targets.items():
            environ = {APP: target.app, URL: target.url, TABLE: table}
            log = tmp / (re.sub(r"\W+", "-", f"{group.key} {name}") + ".log")
            servers[name] = stack.enter_context(serving(load.server, environ, log))
        for name, target in load.targets.items():
            wait_ready(servers[name], PATH, client)
            _check(servers[name], target, client, f"{group.key} {name}")
            _warm_up(target, servers[name], args.warmup, script, f"{group.key} {name}")
        for index in range(args.rounds):
            for name in order(names, index):
                _measure(load, name, servers[name], args.duration, script)
            rates = ", ".join(f"{n} {load.targets[n].samples[-1].rate:,.0f}" for n in names)
            print(f"  round {index + 1}/{args.rounds}: req/s {rates}", flush=True)
        for name, target in load.targets.items():
            _check(servers[name], target, client, f"{group.key} {name}")


# --- the report -----------------------------------------------------------------------------


def _range(values: cabc.Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def table(loads: cabc.Sequence[LoadGroup]) -> list[str]:
    lines = [
        "| group | server | variant | req/s (rounds min–max) | p50 ms | p99 ms"
        " | ours ÷ this req/s (min–max) | ours ÷ this p99 (min–max) | server CPU µs/request"
        " | socket errors |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for load in loads:
        group = load.group
        for name, target in load.targets.items():
            head = f"| {group.title} | {group.transport} | {name} |"
            if group.skipped:
                lines.append(f"{head} skipped | | | | | | |")
                continue
            rates = [s.rate for s in target.samples]
            ratios = "—" if name == OURS else _range(group.round_ratios(name))
            p99s = "—" if name == OURS else _range(load.p99_ratios(name))
            cpus = [s.cpu for s in target.samples if s.cpu is not None]
            cpu = f"{statistics.median(cpus) * 1e6:,.0f}" if cpus else "—"
            lines.append(
                f"{head} {statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) |"
                f" {statistics.median(s.p50 for s in target.samples) * 1e3:.2f} |"
                f" {statistics.median(s.p99 for s in target.samples) * 1e3:.2f} |"
                f" {ratios} | {p99s} | {cpu} | {sum(s.socket_errors for s in target.samples)} |"
            )
    return lines


@dataclass(frozen=True)
class Goal:
    """A goal's outcome: ``ours ÷ variant`` per round against *bound* (a floor or a ceiling)."""

    text: str  # e.g. "ours ≥ 0.99× hand-written req/s"
    where: str  # group key
    ratios: list[float]
    bound: float
    ceiling: bool = False  # True: the ratio must stay at or below the bound

    @property
    def measured(self) -> float:
        return statistics.median(self.ratios)

    @property
    def met(self) -> bool:
        return self.measured <= self.bound if self.ceiling else self.measured >= self.bound

    def line(self) -> str:
        low, high = min(self.ratios), max(self.ratios)
        notes = [] if self.met else [f"{abs(self.measured - self.bound):.2f} off the goal"]
        if low <= self.bound <= high:
            notes.append("the rounds straddle the goal: within this run's noise")
        return (
            f"- {'met' if self.met else 'MISSED'}: {self.text} — {self.where}:"
            f" {self.measured:.2f}× (rounds {low:.2f}–{high:.2f})"
            + "".join(f"; {note}" for note in notes)
        )


def goals(load: LoadGroup) -> list[Goal]:
    """The group's throughput goals, then its p99 goals (without ratios when it is skipped)."""
    group = load.group

    def ratios(of: cabc.Callable[[str], list[float]], name: str) -> list[float]:
        return [] if group.skipped else of(name)

    found = [
        Goal(f"ours ≥ {bound:g}× {name} req/s", group.key, ratios(group.round_ratios, name), bound)
        for name, bound in group.goals.items()
    ]
    found += [
        Goal(
            f"ours p99 ≤ {bound:g}× {name}'s", group.key, ratios(load.p99_ratios, name), bound, True
        )
        for name, bound in P99_GOALS.items()
        if name in load.targets
    ]
    return found


def goals_lines(loads: cabc.Sequence[LoadGroup]) -> list[str]:
    """The goals, each met, missed or skipped; then the server CPU per request against the
    same variants, which other programs on the machine disturb much less than req/s."""
    lines = [
        f"- skipped: {goal.text} — {goal.where}: {load.group.skipped}"
        if load.group.skipped
        else goal.line()
        for load in loads
        for goal in goals(load)
    ]
    for load in loads:
        for name in load.group.goals if not load.group.skipped else ():
            ratios = load.cpu_ratios(name)
            if ratios:
                lines.append(
                    f"- for comparison: ours' server CPU per request ÷ {name}'s — {load.group.key}:"
                    f" {_range(ratios)} (below 1: ours used less)"
                )
    return lines


def warmup_section(loads: cabc.Sequence[LoadGroup]) -> list[str]:
    """Failed responses during the warm-ups (not measured, but telling), if there were any."""
    lines = [
        f"- {load.group.key}, {name}: {target.warmup_failures}"
        for load in loads
        for name, target in load.targets.items()
        if target.warmup_failures
    ]
    if not lines:
        return []
    return ["## Failures during the warm-up", "", *lines, ""]


def document(
    args: argparse.Namespace,
    loads: cabc.Sequence[LoadGroup],
    pg: tuple[str, str],
    seconds: float,
    load_averages: tuple[str, str],
) -> list[str]:
    version, note = pg
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = " --quick" if args.quick else ""
    spreads = [v.spread for load in loads if not load.group.skipped for v in load.group.variants]
    noise = (
        f"Noise: a variant's slowest and fastest rounds differ by"
        f" {statistics.median(spreads) * 100:.0f}% of its median req/s (median over variants;"
        f" worst {max(spreads) * 100:.0f}%)."
        if spreads
        else "Noise: nothing was measured."
    )
    return [
        "# Benchmark under load",
        "",
        f"Measured {when} by `python -m bench.load{mode}` at commit {report.git_revision()}:"
        f" {wrk_version()}, {CONNECTIONS} keep-alive connections from one wrk thread; a"
        f" {args.warmup:g} s warm-up per variant, then {args.rounds} interleaved round(s) of"
        f" {args.duration:g} s per variant; run time {seconds:.0f} s.",
        "",
        f"Machine: {report.machine_line(version)}; load average (1, 5, 15 min)"
        f" {load_averages[0]} at the start, {load_averages[1]} at the end. wrk runs on the same"
        " machine and competes with the servers for its cores; their CPU time per request"
        " hardly depends on that.",
        "",
        f"Versions: {report.versions()}, gunicorn {importlib.metadata.version('gunicorn')}.",
        "",
        f"PostgreSQL: {note}.",
        "",
        "Servers, the same for every variant of a group: "
        + "; ".join(f"`{sizing}`" for sizing in SIZING.values())
        + ". Every worker builds its own app and engine, with SQLAlchemy's default pool (5"
        " connections + 10 overflow; both extensions keep it here), except nullpool's NullPool."
        f" Every {RECONNECT}th request carries `Connection: close` and wrk reconnects, which"
        " spreads the connections over the workers.",
        "",
        "## Throughput and latency",
        "",
        "req/s: median over the rounds (lowest and highest round). p50, p99: wrk's latency"
        " percentiles, median over the rounds. ours ÷ this: per round, ours' req/s over this"
        " variant's (above 1: ours served more) and ours' p99 over this variant's (below 1:"
        " ours' tail is shorter); the median of the rounds, with the lowest and highest.",
        "",
        *table(loads),
        "",
        noise,
        "",
        "## Goals",
        "",
        *goals_lines(loads),
        "",
        *warmup_section(loads),
    ]


def load_averages() -> str:
    """The 1, 5 and 15 minute load averages: above the core count, programs waited for a CPU."""
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def parse_args(argv: cabc.Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s, 1 s warm-up")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (5; --quick: 3)")
    parser.add_argument("--duration", type=float, help="seconds of load per variant per round (5)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up load per variant (2)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL groups")
    parser.add_argument("--only", metavar="TEXT", help="only groups whose name contains TEXT")
    parser.add_argument("--out", type=Path, default=OUT, help="the report file (%(default)s)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds if args.rounds is not None else (3 if args.quick else 5)
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 1:
        parser.error("--rounds, --duration and --warmup must be at least 1")
    return args


def main(argv: cabc.Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = wrk_missing()
    if missing:
        print(f"bench.load skipped: {missing}", file=sys.stderr)
        return 1
    start, started_load = time.perf_counter(), load_averages()
    with contextlib.ExitStack() as stack:
        dbs = stack.enter_context(databases(not args.no_postgres))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="asse-load-")))
        (tmp / "report.lua").write_text(WRK_SCRIPT, encoding="utf-8")
        note = dbs.pg_skipped or f"{shown(postgres_url())}, table {dbs.table.name}"
        wanted = (args.only or "").lower()
        loads = [load for load in plan(dbs) if wanted in load.group.key.lower()]
        print(f"{len(loads)} groups; PostgreSQL: {note}", flush=True)
        try:
            for load in loads:
                if load.group.skipped:
                    print(f"{load.group.key}: skipped: {load.group.skipped}", flush=True)
                    continue
                print(f"{load.group.key}: {', '.join(load.targets)}", flush=True)
                run_group(load, args, tmp, dbs.table.name)
        except (BenchError, httpx.HTTPError) as error:
            print(f"load benchmark failed: {error}", file=sys.stderr)
            return 1
        pg = (dbs.pg_version, note)
    loads_seen = (started_load, load_averages())
    lines = document(args, loads, pg, time.perf_counter() - start, loads_seen)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
