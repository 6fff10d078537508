"""Profile variants in-process with pyinstrument: where does ours spend more than hand-written?

``python -m bench.profile "Quart, PostgreSQL" --requests 2000`` builds the matching
in-process group (as the benchmark does), warms each variant up and profiles its requests.
It prints the library's functions by their share of ours' time, then the functions whose
self time per request differs most between ours and the other variant (``--against``).
Only the calling thread is sampled: Flask async views (run on the shared loop's thread) are
not seen in detail.
"""

from __future__ import annotations

import argparse
import asyncio
import collections.abc as cabc
import contextlib
import sys
from dataclasses import dataclass

from pyinstrument import Profiler
from pyinstrument.frame import Frame

from .db import databases
from .drivers import http_client
from .groups import Context, build_groups
from .measure import HAND, OURS, Variant

LIBRARY = "async_scoped_session_ext"


@dataclass
class Share:
    """Inclusive seconds of one library function (recursion counted once), and self seconds."""

    inclusive: float = 0.0
    own: float = 0.0


def library_shares(root: Frame) -> dict[str, Share]:
    """Time spent in each ``async_scoped_session_ext`` function, by ``file:function``."""
    shares: dict[str, Share] = {}

    def walk(frame: Frame, open_keys: frozenset[str]) -> None:
        key = ""
        if frame.file_path and LIBRARY in frame.file_path:
            key = f"{frame.file_path_short}:{frame.function}"
            share = shares.setdefault(key, Share())
            share.own += frame.total_self_time
            if key not in open_keys:
                share.inclusive += frame.time
        keys = open_keys | {key} if key else open_keys
        for child in frame.children:
            walk(child, keys)

    walk(root, frozenset())
    return shares


def profile(variants: cabc.Sequence[Variant], requests: int, interval: float) -> list[Profiler]:
    """Profile each variant's *requests*, in interleaved chunks so load hits all alike."""
    profilers = [Profiler(interval=interval, async_mode="disabled") for _ in variants]
    for variant in variants:
        variant.hit(min(requests, 100))  # warm up: pools, caches, lazy imports
    chunk = 50
    for index in range(max(1, requests // chunk)):
        pairs = list(zip(variants, profilers, strict=True))
        for variant, profiler in pairs if index % 2 == 0 else pairs[::-1]:
            profiler.start()  # sessions of one profiler are combined
            try:
                variant.hit(chunk)
            finally:
                profiler.stop()
    return profilers


def self_times(root: Frame) -> dict[str, float]:
    """Self seconds of every function, by ``file:function``."""
    found: dict[str, float] = {}

    def walk(frame: Frame) -> None:
        if not frame.is_synthetic:  # "[self]" leaves are counted in their parent's
            key = f"{frame.file_path_short}:{frame.function}"
            found[key] = found.get(key, 0.0) + frame.total_self_time
        for child in frame.children:
            walk(child)

    walk(root)
    return found


def root_of(profiler: Profiler) -> Frame:
    session = profiler.last_session
    root = session.root_frame() if session is not None else None
    if root is None:
        raise SystemExit("nothing was sampled: raise --requests")
    return root


def report(ours: Frame, other: Frame, other_name: str, requests: int, top: int) -> None:
    per = 1e6 / requests
    print(f"ours: {ours.time * per:,.0f} µs/request sampled;")
    print(f"{other_name}: {other.time * per:,.0f} µs/request sampled")
    print()
    print("Library functions in ours (inclusive time includes what they call):")
    print(f"{'share':>6}  {'µs/req':>7}  {'self µs':>7}  file:function")
    ranked = sorted(library_shares(ours).items(), key=lambda item: -item[1].inclusive)
    for key, share in ranked[:top]:
        print(
            f"{share.inclusive / ours.time:>6.1%}  {share.inclusive * per:>7.1f}"
            f"  {share.own * per:>7.1f}  {key}"
        )
    print()
    print(f"Self time per request, ours minus {other_name} (largest differences):")
    mine, theirs = self_times(ours), self_times(other)
    diffs = {key: mine.get(key, 0.0) - theirs.get(key, 0.0) for key in mine.keys() | theirs}
    for key, diff in sorted(diffs.items(), key=lambda item: -item[1])[:top]:
        print(f"{diff * per:>+8.1f} µs  {key}")
    print(f"{sum(diffs.values()) * per:>+8.1f} µs  in all")


def main(argv: cabc.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("group", help="text in the group's name, e.g. 'Quart, PostgreSQL'")
    parser.add_argument("--against", default=HAND, help="the variant to compare ours with")
    parser.add_argument("--requests", type=int, default=2000, help="profiled requests (2000)")
    parser.add_argument("--interval", type=float, default=0.001, help="sampling seconds")
    parser.add_argument("--top", type=int, default=15, help="lines per list (15)")
    parser.add_argument("--tree", action="store_true", help="also print ours' call tree")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        dbs = stack.enter_context(databases())
        runner = stack.enter_context(asyncio.Runner())
        client = stack.enter_context(http_client())
        ctx = Context(stack, dbs, runner, client, scale=1.0)
        groups = [g for g in build_groups(ctx, wire=False, only=args.group) if not g.skipped]
        if len(groups) != 1:
            print(f"need exactly one in-process group matching {args.group!r}; got {groups}")
            return 2
        group = groups[0]
        ours, other = group.variant(OURS), group.variant(args.against)
        if ours is None or other is None:
            print(f"{group.key} has no variant {args.against!r}")
            return 2
        print(f"profiling {group.key}: ours against {other.name}, {args.requests} requests each")
        requests = max(1, args.requests // 50) * 50
        ours_profile, other_profile = profile([ours, other], requests, args.interval)
        report(root_of(ours_profile), root_of(other_profile), other.name, requests, args.top)
        if args.tree:
            print(ours_profile.output_text(time="percent_of_total"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
