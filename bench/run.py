"""Run every benchmark group interleaved, then the scalings; write ``results.md``, ``chart.png``.

``python -m bench --help`` (from the repository root) or ``python3 -m nox -s bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections.abc as cabc
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from . import access, report
from .chart import write_chart
from .db import databases, postgres_url, shown
from .drivers import http_client
from .groups import Backends, Context, build_groups
from .measure import BenchError, Group, run_rounds
from .scaling import CONTEXTS, ENGINES, FLAT, build_scaling

RESULTS = Path(__file__).parent / "results"


def parse_args(argv: cabc.Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 rounds, a fifth of the requests")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (7; --quick: 3)")
    parser.add_argument("--scale", type=float, help="multiply every group's request count (1)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per variant (30; --quick: 10)")
    parser.add_argument("--no-wire", action="store_true", help="in-process groups only")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL groups")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling groups")
    parser.add_argument("--only", metavar="TEXT", help="only groups whose name contains TEXT")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="where results.md and chart.png go (bench/results)",
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds if args.rounds is not None else (3 if args.quick else 7)
    args.scale = args.scale if args.scale is not None else (0.2 if args.quick else 1.0)
    args.warmup = args.warmup if args.warmup is not None else (10 if args.quick else 30)
    if args.rounds < 1 or args.scale <= 0 or args.warmup < 1:
        parser.error("--rounds and --warmup must be at least 1, --scale above 0")
    return args


def backends_lines(backends: cabc.Sequence[Backends]) -> list[str]:
    lines = []
    for seen in backends:
        limit = (
            "no pool"
            if seen.pool_limit is None
            else f"pool_size + max_overflow = {seen.pool_limit}"
        )
        lines.append(
            f"- {seen.group}, {seen.variant}: {len(seen.pids):,} PostgreSQL backend(s) for"
            f" {seen.requests:,} requests ({limit}; {seen.checked_out()} connection(s) checked"
            " out at the end)"
        )
    return lines


@dataclass
class Measured:
    """What :func:`measure` returns: the groups, the scalings and what the run saw."""

    groups: list[Group]
    scaling: list[Group]
    backends: list[str]
    pg_version: str
    pg_note: str


def document(
    args: argparse.Namespace,
    measured: Measured,
    costs: cabc.Sequence[access.AccessCost],
    seconds: float,
    loads: tuple[str, str],
) -> list[str]:
    groups = measured.groups
    goals = report.goal_results(groups)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = " (--quick)" if args.quick else ""
    lines = [
        "# Benchmark results",
        "",
        f"Measured {when} by `python -m bench`{mode} at commit {report.git_revision()}:"
        f" {args.rounds} interleaved rounds, {args.warmup} warm-up requests per variant,"
        f" sequential requests; run time {seconds:.0f} s.",
        "",
        f"Machine: {report.machine_line(measured.pg_version)}; load average {loads[0]} at the"
        f" start, {loads[1]} at the end.",
        "",
        f"Versions: {report.versions()}.",
        "",
    ]
    if measured.pg_note:
        lines += [f"PostgreSQL: {measured.pg_note}.", ""]
    if groups:
        lines += [
            "## Requests",
            "",
            "Median time per request over the rounds, req/s at that median, and how many times"
            " ours' throughput is this variant's (above 1: ours is faster). The SQLite views"
            " run `select 1` (the cheapest query, so the session handling is most of the"
            " database cost); the PostgreSQL views select one row by primary key.",
            "",
            *report.variants_table(groups),
            "",
            report.noise_line(groups),
            "",
            "## Per-request overhead: ours − hand-written",
            "",
            "Ours' time per request minus hand-written's in each round (both measured in the"
            " same round): the median over the rounds, and the lowest and highest round. The"
            " last column is the same difference in process CPU time (median over the rounds),"
            " which other programs on the machine disturb less.",
            "",
            *report.hand_table(groups),
            "",
        ]
    lines += [
        "## Goals",
        "",
        *report.goals_lines(groups, goals, costs),
        "",
        "## `current_session` attribute access",
        "",
        "Median of interleaved `timeit` repeats inside a pushed app context.",
        "",
        *report.access_table(costs),
        "",
    ]
    if groups:
        lines += [
            "## Per-request overhead over the no-database floor",
            "",
            *report.overhead_table(groups),
            "",
        ]
    if measured.scaling:
        lines += [
            "## Scaling",
            "",
            f"Ours alone, in-process, with N = {', '.join(f'{n:,}' for n in ENGINES)} engines"
            " in an `EngineRegistry` on the app (each used once), and with the request's own"
            f" app context alone (N = 1) or beside N = {CONTEXTS:,} other live app contexts"
            " of the app, each holding its session (pushed before that row's turns, popped"
            " before the other's). Median time per request over the rounds and its range;"
            " each row's time over the first row's, per round. Flat: the largest row at most"
            f" {FLAT:g}× the first (median of the per-round ratios), or no slower than it in"
            " some round (the difference is within the noise).",
            "",
            *report.scaling_table(measured.scaling),
            "",
            *report.scaling_lines(measured.scaling),
            "",
        ]
    if measured.backends:
        lines += ["## Flask async: PostgreSQL connections used", "", *measured.backends, ""]
    return lines


def measure(args: argparse.Namespace) -> Measured:
    """Run the groups, then the scalings, each set in its own interleaved rounds."""
    with contextlib.ExitStack() as stack:
        dbs = stack.enter_context(databases(not args.no_postgres))
        runner = stack.enter_context(asyncio.Runner())
        client = stack.enter_context(http_client())
        ctx = Context(stack, dbs, runner, client, args.scale)
        groups = build_groups(ctx, wire=not args.no_wire, only=args.only)
        note = dbs.pg_skipped or f"{shown(postgres_url())}, table {dbs.table.name}"
        print(f"{len(groups)} groups; PostgreSQL: {note}", flush=True)
        run_rounds(groups, args.rounds, args.warmup)
        # After the groups, so that none of them runs beside the scalings' engines and
        # contexts; their own rounds interleave their rows.
        scaling = [] if args.no_scaling else build_scaling(ctx, only=args.only)
        if scaling:
            print(f"{len(scaling)} scaling groups", flush=True)
            run_rounds(scaling, args.rounds, args.warmup)
        return Measured(groups, scaling, backends_lines(ctx.backends), dbs.pg_version, note)


def main(argv: cabc.Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    start, load = time.perf_counter(), report.load_average()
    try:
        measured = measure(args)
    except (BenchError, httpx.HTTPError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    costs = access.measure_all(number=10_000 if args.quick else 20_000, repeat=25)
    seconds = time.perf_counter() - start
    loads = (load, report.load_average())
    lines = document(args, measured, costs, seconds, loads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines), encoding="utf-8")
    written = [args.out / "results.md"]
    charted = [*measured.groups, *measured.scaling]
    if write_chart(charted, args.out / "chart.png", report.machine_line(measured.pg_version)):
        written.append(args.out / "chart.png")
    print("\n".join(lines))
    print("written:", ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
