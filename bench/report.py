"""The results as Markdown: the variants table, the goals, access cost, overhead, scaling."""

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
from .scaling import Flatness

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
    """One goal of one group's variant, as measured: the median over rounds and its range."""

    text: str  # what was promised, e.g. "ours ≥ 0.99× hand-written"
    where: str  # group key
    measured: float
    low: float
    high: float
    met: bool
    margin: float  # how far the median is on the right side of the goal (negative: missed)
    unit: str  # "×" (a throughput ratio) or " µs" (µs per request)

    def figure(self) -> str:
        """The median and the rounds' range, e.g. ``0.873× (rounds 0.861–0.921)``."""
        if self.unit == "×":
            return f"{self.measured:.3f}× (rounds {self.low:.3f}–{self.high:.3f})"
        return f"{self.measured:+,.1f} µs/request (rounds {self.low:+,.1f} to {self.high:+,.1f})"

    def outcome(self) -> str:
        """``met, ... to spare`` or ``MISSED by ...``."""
        amount = f"{abs(self.margin):,.{3 if self.unit == '×' else 1}f}{self.unit}"
        return f"met, {amount} to spare" if self.met else f"MISSED by {amount}"


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


def variant_goals(group: Group, name: str) -> list[GoalResult]:
    """The goals of *group*'s variant *name*, measured (none if the group was skipped)."""
    results = []
    minimum = group.goals.get(name)
    if minimum is not None and not group.skipped:
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
                measured - minimum,
                "×",
            )
        )
    limit = group.limits_us.get(name)
    if limit is not None and not group.skipped:
        extra = [seconds * 1e6 for seconds in group.round_differences(name)]
        measured = statistics.median(extra)
        results.append(
            GoalResult(
                f"ours ≤ {name} + {limit:g} µs/request",
                group.key,
                measured,
                min(extra),
                max(extra),
                measured <= limit,
                limit - measured,
                " µs",
            )
        )
    return results


def goal_results(groups: cabc.Sequence[Group]) -> list[GoalResult]:
    """Every measured goal, in report order."""
    return [
        goal
        for group in groups
        for variant in group.variants
        for goal in variant_goals(group, variant.name)
    ]


def _goal_text(group: Group, name: str) -> str:
    parts = []
    if name in group.goals:
        parts.append(f"ours ≥ {group.goals[name]:g}×")
    if name in group.limits_us:
        parts.append(f"ours − this ≤ {group.limits_us[name]:g} µs")
    return ", ".join(parts)


def _met_cell(goals: cabc.Sequence[GoalResult]) -> str:
    return ", ".join("yes" if goal.met else "no" for goal in goals)


def _ratio_cell(group: Group, name: str) -> str:
    if name == OURS:
        return "—"
    ratios = group.round_ratios(name)
    return f"{group.ratio(name):.3f} ({min(ratios):.3f}–{max(ratios):.3f})"


def variants_table(groups: cabc.Sequence[Group]) -> list[str]:
    lines = [
        "| group | transport | variant | µs/request | req/s | ours ÷ this (rounds min–max)"
        " | goal | met | CPU µs/request |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for group in groups:
        for variant in group.variants:
            head = f"| {group.title} | {group.transport} | {variant.name} |"
            goal = _goal_text(group, variant.name)
            if group.skipped:
                lines.append(f"{head} skipped | skipped | skipped | {goal} | skipped | skipped |")
                continue
            lines.append(
                f"{head} {variant.median * 1e6:,.0f} | {variant.rate:,.0f} |"
                f" {_ratio_cell(group, variant.name)} | {goal} |"
                f" {_met_cell(variant_goals(group, variant.name))} |"
                f" {variant.cpu_median * 1e6:,.0f} |"
            )
    return lines


def hand_table(groups: cabc.Sequence[Group]) -> list[str]:
    """Ours against hand-written in µs per request, per round, for the groups with both."""
    lines = [
        "| group | transport | ours µs | hand-written µs | ours − hand-written µs (rounds min–max)"
        " | ours ÷ hand-written (rounds min–max) | goal | met | CPU: ours − hand-written µs |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for group in groups:
        ours, hand = group.variant(OURS), group.variant(HAND)
        if group.skipped or ours is None or hand is None:
            continue
        extra = [seconds * 1e6 for seconds in group.round_differences(HAND)]
        cpu = statistics.median(group.round_differences(HAND, cpu=True)) * 1e6
        lines.append(
            f"| {group.title} | {group.transport} | {ours.median * 1e6:,.1f} |"
            f" {hand.median * 1e6:,.1f} | {statistics.median(extra):+,.1f}"
            f" ({min(extra):+,.1f} to {max(extra):+,.1f}) | {_ratio_cell(group, HAND)} |"
            f" {_goal_text(group, HAND)} | {_met_cell(variant_goals(group, HAND))} |"
            f" {cpu:+,.1f} |"
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
        " per-round ratio."
    )


def scaling_table(groups: cabc.Sequence[Group]) -> list[str]:
    """One row per scaling row: its time per request and its cost over the group's first."""
    lines = [
        "| scaling | N | µs/request (rounds min–max) | ÷ first row (rounds min–max)"
        " | CPU µs/request | flat? |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for group in groups:
        first = group.variants[0]
        for variant in group.variants:
            ratios = group.round_ratios(variant.name, base=first.name)
            flat = ""
            if variant is group.variants[-1]:
                flat = "yes" if Flatness.of(group).flat else "**no**"
            lines.append(
                f"| {group.title} | {variant.name} | {variant.median * 1e6:,.1f}"
                f" ({min(variant.seconds) * 1e6:,.1f}–{max(variant.seconds) * 1e6:,.1f}) |"
                f" {statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |"
                f" {variant.cpu_median * 1e6:,.1f} | {flat} |"
            )
    return lines


def scaling_lines(groups: cabc.Sequence[Group]) -> list[str]:
    """Each scaling's verdict, with the figures behind it."""
    return [f"- {group.title}: {Flatness.of(group).verdict()}" for group in groups]


def goals_lines(
    groups: cabc.Sequence[Group],
    goals: cabc.Sequence[GoalResult],
    costs: cabc.Sequence[AccessCost],
) -> list[str]:
    lines = [
        f"- skipped: {name}: {_goal_text(group, name)} — {group.key}: {group.skipped}"
        for group in groups
        if group.skipped
        for name in {**group.goals, **group.limits_us}
    ]
    for goal in goals:
        verdict = "met" if goal.met else "MISSED"
        lines.append(f"- {verdict}: {goal.text} — {goal.where}: {goal.figure()}; {goal.outcome()}")
    for cost in costs:
        verdict = "met" if cost.met else "MISSED"
        spare = abs(GOAL_NS - cost.overhead_ns)
        lines.append(
            f"- {verdict}: current_session access ≤ {GOAL_NS:,.0f} ns over plain — {cost.setup}:"
            f" {cost.overhead_ns:,.0f} ns; "
            + (f"met, {spare:,.0f} ns to spare" if cost.met else f"MISSED by {spare:,.0f} ns")
        )
    return lines
