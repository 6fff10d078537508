"""The results as Markdown: the variants table, the goals, access cost and overhead."""

from __future__ import annotations

import collections.abc as cabc
import importlib.metadata
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .access import GOAL_NS, AccessCost
from .measure import FLOOR, HAND, OURS, Group

#: ``ours ÷ variant`` at or above this counts as "not slower" within noise.
WITHIN_NOISE = 0.95
DISTRIBUTIONS = (
    "async-scoped-session-ext",
    "flask",
    "werkzeug",
    "quart",
    "hypercorn",
    "sqlalchemy",
    "psycopg",
    "asyncpg",
    "aiosqlite",
    "flask-sqlalchemy",
    "flask-sqlalchemy-lite",
    "asgiref",
    "httpx",
)


@dataclass(frozen=True)
class GoalResult:
    text: str  # what was promised, e.g. "ours ≥ 0.95× hand-written"
    where: str  # group key
    measured: float
    low: float
    high: float
    met: bool


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> str:
    found = [f"Python {platform.python_version()}"]
    for dist in DISTRIBUTIONS:
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{dist} missing")
    return ", ".join(found)


def machine_line(pg_version: str) -> str:
    cores = os.cpu_count() or 0
    server = pg_version.split(" on ")[0] if pg_version else "PostgreSQL not used"
    return f"{platform.system()} {platform.release()}, {cpu_name()} × {cores} cores; {server}"


def load_average() -> str:
    """The 1-minute load average: above the core count, other programs competed for the CPU."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def git_revision() -> str:
    """The checkout's commit (``+`` when it has uncommitted changes), or ``unknown``."""
    here = Path(__file__).parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def goal_results(groups: cabc.Sequence[Group]) -> list[GoalResult]:
    results = []
    for group in groups:
        if group.skipped:
            continue
        for name, minimum in group.goals.items():
            ratios = group.round_ratios(name)
            measured = group.ratio(name)
            results.append(
                GoalResult(
                    f"ours ≥ {minimum:g}× {name}",
                    group.key,
                    measured,
                    min(ratios),
                    max(ratios),
                    measured >= minimum,
                )
            )
    return results


def _ratio_cell(group: Group, name: str) -> str:
    if name == OURS:
        return "—"
    ratios = group.round_ratios(name)
    return f"{group.ratio(name):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"


def variants_table(groups: cabc.Sequence[Group]) -> list[str]:
    lines = [
        "| group | transport | variant | µs/request | req/s | ours ÷ this (rounds min–max)"
        " | goal | met | CPU µs/request |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for group in groups:
        for variant in group.variants:
            head = f"| {group.title} | {group.transport} | {variant.name} |"
            minimum = group.goals.get(variant.name)
            goal = f"ours ≥ {minimum:g}×" if minimum is not None else ""
            if group.skipped:
                lines.append(f"{head} skipped | skipped | skipped | {goal} | skipped | skipped |")
                continue
            met = (
                "" if minimum is None else ("yes" if group.ratio(variant.name) >= minimum else "no")
            )
            lines.append(
                f"{head} {variant.median * 1e6:,.0f} | {variant.rate:,.0f} |"
                f" {_ratio_cell(group, variant.name)} | {goal} | {met} |"
                f" {variant.cpu_median * 1e6:,.0f} |"
            )
    return lines


def access_table(costs: cabc.Sequence[AccessCost]) -> list[str]:
    lines = [
        "| setup | `current_session.execute` ns | plain `session.execute` ns | overhead ns"
        " | goal | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for cost in costs:
        lines.append(
            f"| {cost.setup} | {cost.proxied_ns:,.0f} | {cost.plain_ns:,.0f} |"
            f" {cost.overhead_ns:,.0f} | ≤ {GOAL_NS:,.0f} ns | {'yes' if cost.met else 'no'} |"
        )
    return lines


def overhead_table(groups: cabc.Sequence[Group]) -> list[str]:
    """Per-request µs above the no-database floor, for the groups that measured one."""
    lines = [
        "| group | transport | floor µs | ours − floor µs | hand-written − floor µs |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for group in groups:
        floor, ours, hand = (group.variant(n) for n in (FLOOR, OURS, HAND))
        if group.skipped or floor is None or ours is None or hand is None:
            continue
        lines.append(
            f"| {group.title} | {group.transport} | {floor.median * 1e6:,.0f} |"
            f" {(ours.median - floor.median) * 1e6:,.0f} |"
            f" {(hand.median - floor.median) * 1e6:,.0f} |"
        )
    return lines


def noise_line(groups: cabc.Sequence[Group]) -> str:
    spreads = [v.spread for g in groups if not g.skipped for v in g.variants]
    if not spreads:
        return "Noise: nothing was measured."
    return (
        "Noise: a variant's slowest and fastest rounds differ by"
        f" {statistics.median(spreads) * 100:.0f}% of its median (median over variants;"
        f" worst {max(spreads) * 100:.0f}%). A ratio's range is the lowest and highest"
        f" per-round ratio; ours ≥ {WITHIN_NOISE}× counts as not slower."
    )


def goals_lines(
    groups: cabc.Sequence[Group],
    goals: cabc.Sequence[GoalResult],
    costs: cabc.Sequence[AccessCost],
) -> list[str]:
    lines = [
        f"- skipped: ours ≥ {minimum:g}× {name} — {group.key}: {group.skipped}"
        for group in groups
        if group.skipped
        for name, minimum in group.goals.items()
    ]
    for goal in goals:
        verdict = "met" if goal.met else "MISSED"
        lines.append(
            f"- {verdict}: {goal.text} — {goal.where}: {goal.measured:.2f}×"
            f" (rounds {goal.low:.2f}–{goal.high:.2f})"
        )
    for cost in costs:
        verdict = "met" if cost.met else "MISSED"
        lines.append(
            f"- {verdict}: current_session access ≤ {GOAL_NS:,.0f} ns over plain — {cost.setup}:"
            f" {cost.overhead_ns:,.0f} ns"
        )
    return lines
