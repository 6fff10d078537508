"""Stress: a hypercorn-served Quart app on PostgreSQL (asyncpg) under faults; leaks and memory.

``python -m stress`` runs it and prints the report (``--json PATH`` also writes it as JSON);
it exits with 0 when it is clean, 1 when it is not, 2 when PostgreSQL does not answer.
``python -m stress --serve`` is the server's side, which the run starts as a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import collections.abc as cabc
import json
import re
import sys
from pathlib import Path

from . import server
from .plan import DatabaseUnavailable, StressConfig, StressError, asyncpg_url
from .run import run_stress


def positive(value: str) -> int:
    """An option's value as an integer of at least 1."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def positive_float(value: str) -> float:
    """An option's value as a number above 0."""
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {number}")
    return number


def parse_args(argv: cabc.Sequence[str] | None) -> argparse.Namespace:
    """The command line: the run's options, the server's, and those of the --serve mode."""
    parser = argparse.ArgumentParser(
        prog="python -m stress",
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
    """Run the stress test (or, with --serve, serve the app); the exit status."""
    args = parse_args(argv)
    url = asyncpg_url(args.url)
    if args.serve:
        return server.serve(
            url,
            args.app_name,
            args.table,
            args.pool_size,
            args.max_overflow,
            fd=args.fd,
            port=args.port,
        )
    config = StressConfig(
        url=url,
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
