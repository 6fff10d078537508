"""What a run does: its options, the seeded mix of requests, and the outcomes it expects.

Every other module of the package builds on this one and imports nothing else from it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
HOST = "127.0.0.1"  # the server listens on this address only

# The request mix: each kind's weight (see plan() for what each kind does).
NORMAL, RAISE, SLOW, DISCONNECT, TIMEOUT = "normal", "raise", "slow", "disconnect", "timeout"
MIX: dict[str, float] = {NORMAL: 70, RAISE: 10, SLOW: 10, DISCONNECT: 5, TIMEOUT: 5}
# Faults the view injects after flushing: Python exceptions, and database errors that leave
# the transaction aborted (a failing statement, a unique violation). See server.inject().
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


def asyncpg_url(url: str | None = None) -> str:
    """*url* (default: ``ASSE_POSTGRES_URL``) with the asyncpg driver."""
    parsed = make_url(url or os.environ.get("ASSE_POSTGRES_URL", DEFAULT_URL))
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def shown_url(url: str) -> str:
    """*url* with its password hidden, to be shown."""
    return make_url(url).render_as_string(hide_password=True)


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
    """What became of one planned request, and whether its kind expects that."""

    n: int
    kind: str
    result: str
    expected: bool
    seconds: float
    detail: str = ""
