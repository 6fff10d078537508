"""``chart.png``: horizontal bars of median req/s, one panel per group."""

from __future__ import annotations

import collections.abc as cabc
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from .measure import OURS, Group  # noqa: E402

OURS_COLOUR = "#2b6cb0"
OTHER_COLOUR = "#a0aec0"


def write_chart(groups: cabc.Sequence[Group], path: Path, subtitle: str) -> bool:
    """Draw every measured group's variants (req/s at the median, the round range as whiskers).

    Returns whether a chart was written: not when every group was skipped.
    """
    measured = [group for group in groups if not group.skipped]
    if not measured:
        return False
    rows = (len(measured) + 1) // 2
    figure, axes = plt.subplots(rows, 2, figsize=(13.0, 2.4 * rows + 1.0), squeeze=False)
    for axis, group in zip(axes.flat, measured, strict=False):
        variants = group.variants[::-1]  # barh draws bottom-up: ours on top
        rates = [variant.rate for variant in variants]
        fastest = [1.0 / min(variant.seconds) for variant in variants]
        slowest = [1.0 / max(variant.seconds) for variant in variants]
        axis.barh(
            [variant.name for variant in variants],
            rates,
            color=[OURS_COLOUR if v.name == OURS else OTHER_COLOUR for v in variants],
            xerr=[
                [rate - low for rate, low in zip(rates, slowest, strict=True)],
                [high - rate for rate, high in zip(rates, fastest, strict=True)],
            ],
            error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#4a5568"},
        )
        for index, (rate, high) in enumerate(zip(rates, fastest, strict=True)):
            axis.text(high, index, f"  {rate:,.0f}", va="center", fontsize=8)
        axis.set_title(group.key, fontsize=9, loc="left")
        axis.set_xlim(0, max(fastest) * 1.3)
        axis.tick_params(labelsize=8)
        axis.set_xlabel("req/s", fontsize=8)
    for axis in list(axes.flat)[len(measured) :]:
        axis.set_visible(False)
    figure.suptitle(
        "async_scoped_session_ext benchmarks: req/s, median of rounds (whiskers: slowest and"
        f" fastest round)\n{subtitle}",
        fontsize=10,
    )
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
