"""Variants, groups and the interleaved rounds that measure them."""

from __future__ import annotations

import collections.abc as cabc
import statistics
import time
from dataclasses import dataclass, field

#: Variant names. ``ours`` is compared with every other variant of its group.
OURS = "ours"
HAND = "hand-written"
FLOOR = "floor"
FSA = "flask-sqlalchemy"
LITE = "flask-sqlalchemy-lite"
NULLPOOL = "nullpool"


class BenchError(Exception):
    """A request failed or answered something unexpected: the numbers would mean nothing."""


#: One request: returns the response status and body.
Call = cabc.Callable[[], tuple[int, bytes]]
#: Sends *count* sequential requests; returns the wall-clock and process CPU seconds taken.
Hit = cabc.Callable[[int], tuple[float, float]]
#: Requests a variant sends before the next variant's turn within a round.
SLICE = 10
#: Checks one response body (raising :class:`BenchError`); may record what it saw.
Check = cabc.Callable[[bytes], None]


def expect(body: bytes) -> Check:
    """A check that the body is exactly *body*."""

    def check(seen: bytes) -> None:
        if seen != body:
            raise BenchError(f"expected {body!r}, got {seen[:300]!r}")

    return check


def timed_calls(call: Call, check: Check, label: str) -> Hit:
    """A :data:`Hit` that makes *count* sequential calls and checks every response."""

    def hit(count: int) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            status, body = call()
            if status != 200:
                raise BenchError(f"{label}: status {status}: {body[:300]!r}")
            check(body)
        return time.perf_counter() - start, time.process_time() - cpu

    return hit


@dataclass
class Variant:
    """One way of serving the same request, measured in rounds."""

    name: str
    hit: Hit
    seconds: list[float] = field(default_factory=list)  # wall per request, one per round
    cpu: list[float] = field(default_factory=list)  # process CPU per request, one per round
    requests: int = 0

    @property
    def median(self) -> float:
        """Median wall-clock seconds per request over the rounds."""
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        """Median process CPU seconds per request over the rounds."""
        return statistics.median(self.cpu)

    @property
    def rate(self) -> float:
        """Requests per second at the median."""
        return 1.0 / self.median

    @property
    def spread(self) -> float:
        """(slowest - fastest round) / median, as a fraction."""
        return (max(self.seconds) - min(self.seconds)) / self.median


@dataclass
class Group:
    """Variants that serve the same request in the same setup, compared with ``ours``."""

    title: str  # e.g. "Sync Flask, SQLite"
    transport: str  # "in-process" or "over the wire"
    requests: int  # per variant per round
    variants: list[Variant] = field(default_factory=list)
    skipped: str = ""  # why the group was not measured
    #: Minimum ``ours ÷ variant`` throughput ratio for variants with a goal.
    goals: dict[str, float] = field(default_factory=dict)
    #: Maximum µs per request of ours over the variant, for variants with such a goal.
    limits_us: dict[str, float] = field(default_factory=dict)
    #: Requests a variant sends per turn (its whole round's when that is more).
    turn: int = SLICE

    @property
    def key(self) -> str:
        return f"{self.title} ({self.transport})"

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    def _pair(self, name: str, base: str) -> tuple[Variant, Variant]:
        first, other = self.variant(base), self.variant(name)
        if first is None or other is None:
            raise KeyError(name if other is None else base)
        return first, other

    def round_ratios(self, name: str, base: str = OURS) -> list[float]:
        """``base ÷ name`` throughput in each round (both measured in the same round).

        That is *name*'s time per request over *base*'s: above 1, *base* is faster.
        """
        first, other = self._pair(name, base)
        return [b / a for a, b in zip(first.seconds, other.seconds, strict=True)]

    def ratio(self, name: str, base: str = OURS) -> float:
        """``base ÷ name`` throughput: the median of the per-round ratios."""
        return statistics.median(self.round_ratios(name, base))

    def round_differences(self, name: str, base: str = OURS, cpu: bool = False) -> list[float]:
        """Seconds per request of *base* minus *name*'s, in each round (measured together).

        Wall-clock seconds, or with *cpu* the process CPU seconds.
        """
        first, other = self._pair(name, base)
        mine, theirs = (first.cpu, other.cpu) if cpu else (first.seconds, other.seconds)
        return [a - b for a, b in zip(mine, theirs, strict=True)]


def order(names: cabc.Sequence[str], index: int) -> list[str]:
    """Turn *index*'s order: reversed every other turn, rotated by one every two turns.

    Over ``2 × len(names)`` turns each name comes first equally often, two names included
    (``ab, ba, ba, ab``); three names go through all six orders.
    """
    if not names:
        return []
    shift = (index // 2) % len(names)
    rotated = [*names[shift:], *names[:shift]]
    return rotated[::-1] if index % 2 else rotated


def run_group_round(group: Group, index: int) -> None:
    """One round of *group*: its variants take turns of ``group.turn`` requests each.

    The order changes every turn, so a slow spell of the machine hits every variant of the
    round alike. Each variant records its seconds per request for the round.
    """
    wall = {v.name: 0.0 for v in group.variants}
    cpu = dict(wall)
    done = 0
    turn = index
    while done < group.requests:
        count = min(group.turn, group.requests - done)
        for name in order([v.name for v in group.variants], turn):
            variant = group.variant(name)
            if variant is not None:
                elapsed, used = variant.hit(count)
                wall[name] += elapsed
                cpu[name] += used
        done += count
        turn += 1
    for variant in group.variants:
        variant.seconds.append(wall[variant.name] / group.requests)
        variant.cpu.append(cpu[variant.name] / group.requests)
        variant.requests += group.requests


def run_rounds(groups: cabc.Sequence[Group], rounds: int, warmup: int) -> None:
    """Warm every variant up, then run *rounds* rounds, each over every group.

    The groups' order changes every round too, so no group always runs first or last.
    """
    live = [group for group in groups if not group.skipped]
    for group in live:
        for variant in group.variants:
            variant.hit(warmup)
    for index in range(rounds):
        for key in order([g.key for g in live], index):
            run_group_round(next(g for g in live if g.key == key), index)
        print(f"  round {index + 1}/{rounds} done", flush=True)
