"""Does ours' per-request cost stay flat as the app grows? Two in-process scalings.

Each is measured for sync Flask on SQLite (pysqlite) and Quart on SQLite (aiosqlite), with
ours' app from ``sync_flask.ours_app`` / ``quart_apps.ours_app`` whose view runs
``select 1`` through ``current_session``, and the same interleaved rounds as every group
(:func:`bench.measure.run_rounds`), after the other groups:

* **registry engines**: one app per row, each also given an
  ``EngineRegistry(url_for, app=app, max_engines=N)`` whose *N* keys (1, 10, 100, 1,000)
  were each asked for once inside an app context, so the app has *N* more scoped sessions,
  each having opened (and closed) a session. The view never uses them. The rows take turns
  of :data:`~bench.measure.SLICE` requests, as variants do.
* **live app contexts**: one app, whose requests are measured while only their own app
  context exists and while 10,000 other app contexts of the same app are alive: each pushed
  in a ``contextvars`` context of its own (not the requests'), having opened its session
  (no connection: nothing was executed), never popped while that row is measured. The
  library's context records are process-wide, so the 10,000 contexts cannot merely sit
  beside the other row: they are pushed before the 10,000 row's turn and popped before the
  other's, so each row has a whole round per turn; ``gc.collect()`` runs before every turn
  of both, so neither pays for the collections the pushing and popping cause.

A scaling is **flat** when its largest row costs at most :data:`FLAT` times its smallest
(the median of the per-round ratios), or when the rounds disagree on which of the two is
faster (the lowest per-round ratio is at most 1): the difference is within the noise.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import contextvars
import gc
import statistics
from dataclasses import dataclass

from flask import Flask
from flask.ctx import AppContext
from quart import Quart
from quart.ctx import AppContext as QuartAppContext

from async_scoped_session_ext import EngineRegistry, current_session

from . import quart_apps, sync_flask
from .drivers import asgi_hit, wsgi_call
from .groups import (
    IN_PROCESS,
    QUART_SQLITE_ONE,
    SELECT_ONE_BODY,
    SYNC_SQLITE_ONE,
    Context,
    dispose_on,
    select_one,
    wanted,
)
from .measure import Group, Hit, Variant, expect, timed_calls

#: Engines in the app's ``EngineRegistry``, one row each.
ENGINES = (1, 10, 100, 1_000)
#: Other app contexts alive in the larger row of the live-contexts scaling.
CONTEXTS = 10_000
#: The largest row may cost this many times the smallest and still count as flat.
FLAT = 1.05

BY_ENGINES = "registry engines"
BY_CONTEXTS = "live app contexts"
#: Requests per row per round at ``--scale 1``, by framework title.
REQUESTS = {SYNC_SQLITE_ONE: 300, QUART_SQLITE_ONE: 200}


def title(framework: str, dimension: str) -> str:
    """A scaling group's title, e.g. ``Scaling by registry engines: Quart, SQLite ...``."""
    return f"Scaling by {dimension}: {framework}"


def row(count: int) -> str:
    """A row's (variant's) name: the count, with thousands separators."""
    return f"{count:,}"


def sync_ours(ctx: Context, url: str, label: str) -> tuple[Flask, Hit]:
    """Ours' sync Flask app on *url* (its view runs ``select 1``) and how to time it."""
    made = sync_flask.ours_app(select_one(ctx.dbs), url)
    ctx.stack.callback(made.close)
    call = wsgi_call(made.app, sync_flask.PATH)
    return made.app, timed_calls(call, expect(SELECT_ONE_BODY), label)


def quart_ours(ctx: Context, url: str, label: str) -> tuple[Quart, Hit]:
    """Ours' Quart app on *url* (its view runs ``select 1``) and how to time it."""
    made = quart_apps.ours_app(select_one(ctx.dbs), url)
    for engine in made.engines:
        ctx.stack.callback(dispose_on, ctx.runner, engine)
    hit = asgi_hit(ctx.runner, made.app, quart_apps.PATH, expect(SELECT_ONE_BODY), label)
    return made.app, hit


# --- registry engines -------------------------------------------------------------------

#: Builds one row of a registry-engines scaling: (engines, label) -> how to time it.
EnginesRow = cabc.Callable[[int, str], Hit]


def _engines_group(ctx: Context, framework: str, make_row: EnginesRow) -> Group:
    group = Group(title(framework, BY_ENGINES), IN_PROCESS, ctx.scaled(REQUESTS[framework]))
    for count in ENGINES:
        group.variants.append(Variant(row(count), make_row(count, f"{group.key} {row(count)}")))
    return group


def _registry_url(url: str) -> cabc.Callable[[str], str]:
    """``url_for`` of the scalings' registries: every key (tenant) on the same database."""
    return lambda key: url


def _keys(registry: EngineRegistry, count: int) -> None:
    """Ask *registry* for *count* keys (in an app context: each opens a session there)."""
    for index in range(count):
        registry[f"tenant-{index}"]


def sync_engines_group(ctx: Context, url: str) -> Group:
    """Ours on sync Flask, beside an ``EngineRegistry`` of 1 to 1,000 engines per row."""

    def make_row(count: int, label: str) -> Hit:
        app, hit = sync_ours(ctx, url, label)
        registry = EngineRegistry(_registry_url(url), app=app, max_engines=count)
        ctx.stack.callback(registry.close)  # before the app's engine is disposed
        with app.app_context():
            _keys(registry, count)
        return hit

    return _engines_group(ctx, SYNC_SQLITE_ONE, make_row)


async def _touch(app: Quart, registry: EngineRegistry, count: int) -> None:
    async with app.app_context():
        _keys(registry, count)


def _aclose_on(runner: asyncio.Runner, registry: EngineRegistry) -> None:
    """Close *registry* on *runner*'s loop, waiting for its engines' disposal."""
    runner.run(registry.aclose())


def quart_engines_group(ctx: Context, url: str) -> Group:
    """Ours on Quart, beside an async ``EngineRegistry`` of 1 to 1,000 engines per row."""

    def make_row(count: int, label: str) -> Hit:
        app, hit = quart_ours(ctx, url, label)
        registry = EngineRegistry(_registry_url(url), is_async=True, app=app, max_engines=count)
        ctx.stack.callback(_aclose_on, ctx.runner, registry)
        ctx.runner.run(_touch(app, registry, count))
        return hit

    return _engines_group(ctx, QUART_SQLITE_ONE, make_row)


# --- live app contexts ------------------------------------------------------------------

#: Pushes the other app contexts and opens their sessions; returns what pops them all.
PushAll = cabc.Callable[[], cabc.Callable[[], None]]


@dataclass
class LiveContexts:
    """The other app contexts of the live-contexts scaling: pushed or not, on demand."""

    push_all: PushAll
    _pop_all: cabc.Callable[[], None] | None = None

    def ensure(self, alive: bool) -> None:
        """Push them all (*alive*) or pop them all, unless they already are; then collect."""
        if alive and self._pop_all is None:
            self._pop_all = self.push_all()
        elif not alive and self._pop_all is not None:
            pop_all, self._pop_all = self._pop_all, None
            pop_all()
        gc.collect()  # not in the turn's time: the garbage of pushing or popping them

    def around(self, hit: Hit, alive: bool) -> Hit:
        """*hit*, timed as before, with the contexts alive or not for the whole turn."""

        def turn(count: int) -> tuple[float, float]:
            self.ensure(alive)
            return hit(count)

        return turn


def push_flask(app: Flask, count: int) -> cabc.Callable[[], None]:
    """Push *count* app contexts of *app*, each in a ``contextvars`` copy, with a session."""
    held: list[tuple[contextvars.Context, AppContext]] = []
    for _ in range(count):
        context, app_ctx = contextvars.copy_context(), app.app_context()
        context.run(app_ctx.push)
        context.run(current_session)  # opens the context's session; it holds no connection
        held.append((context, app_ctx))

    def pop_all() -> None:
        for context, app_ctx in reversed(held):
            context.run(app_ctx.pop)  # the library's teardown closes the session
        held.clear()

    return pop_all


async def _open(app_ctx: QuartAppContext) -> None:
    await app_ctx.push()
    current_session()  # opens the context's session; it holds no connection


async def _each(
    held: cabc.Sequence[tuple[contextvars.Context, QuartAppContext]],
    step: cabc.Callable[[QuartAppContext], cabc.Coroutine[object, object, None]],
) -> None:
    """Run *step* for every app context, each as a task in its own ``contextvars`` context."""
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.create_task(step(app_ctx), context=cv) for cv, app_ctx in held))


async def _pop(app_ctx: QuartAppContext) -> None:
    await app_ctx.pop(None)  # the library's teardown closes the session


def push_quart(runner: asyncio.Runner, app: Quart, count: int) -> cabc.Callable[[], None]:
    """Push *count* app contexts of *app* on *runner*'s loop, each in a task with a session."""
    held = [(contextvars.copy_context(), app.app_context()) for _ in range(count)]
    runner.run(_each(held, _open))

    def pop_all() -> None:
        runner.run(_each(held, _pop))
        held.clear()

    return pop_all


def _contexts_group(ctx: Context, framework: str, hit: Hit, push_all: PushAll) -> Group:
    """The two rows on one app: its requests alone, and beside :data:`CONTEXTS` others."""
    requests = ctx.scaled(REQUESTS[framework])
    group = Group(title(framework, BY_CONTEXTS), IN_PROCESS, requests, turn=requests)
    live = LiveContexts(push_all)
    ctx.stack.callback(live.ensure, False)  # before the app's engine is disposed
    group.variants = [
        Variant(row(1), live.around(hit, alive=False)),
        Variant(row(CONTEXTS), live.around(hit, alive=True)),
    ]
    return group


def sync_contexts_group(ctx: Context, url: str) -> Group:
    """Ours on sync Flask, with 1 or 10,000 live app contexts."""
    app, hit = sync_ours(ctx, url, title(SYNC_SQLITE_ONE, BY_CONTEXTS))
    return _contexts_group(ctx, SYNC_SQLITE_ONE, hit, lambda: push_flask(app, CONTEXTS))


def quart_contexts_group(ctx: Context, url: str) -> Group:
    """Ours on Quart, with 1 or 10,000 live app contexts."""
    app, hit = quart_ours(ctx, url, title(QUART_SQLITE_ONE, BY_CONTEXTS))
    return _contexts_group(
        ctx, QUART_SQLITE_ONE, hit, lambda: push_quart(ctx.runner, app, CONTEXTS)
    )


def build_scaling(ctx: Context, only: str | None = None) -> list[Group]:
    """The four scaling groups (those whose name contains *only*, if given)."""
    sync_url, quart_url = ctx.dbs.sqlite(), ctx.dbs.sqlite("aiosqlite")
    plan: list[tuple[str, cabc.Callable[[], Group]]] = [
        (title(SYNC_SQLITE_ONE, BY_ENGINES), lambda: sync_engines_group(ctx, sync_url)),
        (title(SYNC_SQLITE_ONE, BY_CONTEXTS), lambda: sync_contexts_group(ctx, sync_url)),
        (title(QUART_SQLITE_ONE, BY_ENGINES), lambda: quart_engines_group(ctx, quart_url)),
        (title(QUART_SQLITE_ONE, BY_CONTEXTS), lambda: quart_contexts_group(ctx, quart_url)),
    ]
    return [build() for name, build in plan if wanted(f"{name} ({IN_PROCESS})", only)]


# --- the verdict --------------------------------------------------------------------------


@dataclass(frozen=True)
class Flatness:
    """How the largest row of a scaling compares with its smallest, round by round."""

    smallest: str
    largest: str
    ratio: float  # median over rounds of largest ÷ smallest time per request
    low: float
    high: float
    extra_us: float  # median over rounds of largest − smallest, µs per request

    @property
    def within_noise(self) -> bool:
        """Whether the largest row was no slower than the smallest in some round."""
        return self.low <= 1.0

    @property
    def flat(self) -> bool:
        """Whether the scaling is flat: at most :data:`FLAT`, or within the noise."""
        return self.ratio <= FLAT or self.within_noise

    @classmethod
    def of(cls, group: Group) -> Flatness:
        """The last row of the measured scaling *group* against its first."""
        first, last = group.variants[0], group.variants[-1]
        # round_ratios(name, base) is name's time over base's.
        ratios = group.round_ratios(last.name, base=first.name)
        extra = statistics.median(group.round_differences(first.name, base=last.name))
        return cls(
            first.name,
            last.name,
            statistics.median(ratios),
            min(ratios),
            max(ratios),
            extra * 1e6,
        )

    def verdict(self) -> str:
        """``flat`` or ``NOT flat``, with the figures that decided it."""
        figures = (
            f"{self.largest} ÷ {self.smallest}: {self.ratio:.3f}× (rounds {self.low:.3f}–"
            f"{self.high:.3f}), {self.extra_us:+,.1f} µs/request"
        )
        if self.ratio <= FLAT:
            return f"flat: {figures}, ≤ {FLAT:g}×"
        if self.within_noise:
            return f"flat: {figures}, no slower than the {self.smallest} row in some round"
        return f"NOT flat: {figures}, above {FLAT:g}× and slower in every round"
