"""Build every benchmark group: its apps, servers and how each variant is driven.

Everything made here is closed by the caller's :class:`contextlib.ExitStack`, in reverse:
servers stop and engines are disposed (each on the loop that owns its pool).
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import contextlib
import functools
from dataclasses import dataclass, field

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from . import flask_async_asyncpg, quart_apps, sync_flask
from .db import Databases
from .drivers import asgi_hit, http_hit, serving_asgi, serving_wsgi, wsgi_call
from .measure import (
    HAND,
    LITE,
    NULLPOOL,
    BenchError,
    Check,
    Group,
    Variant,
    expect,
    timed_calls,
)

IN_PROCESS = "in-process"
WIRE = "over the wire"

SYNC_SQLITE = "Sync Flask, SQLite (pysqlite)"
SYNC_PG = "Sync Flask, PostgreSQL (psycopg)"
QUART_SQLITE = "Quart, SQLite (aiosqlite)"
QUART_PG = "Quart, PostgreSQL (asyncpg)"
FLASK_ASYNC_PG = "Flask async, PostgreSQL (asyncpg)"

#: Requests per variant per round at ``--scale 1``, by (title, transport).
REQUESTS = {
    (SYNC_SQLITE, IN_PROCESS): 300,
    (SYNC_PG, IN_PROCESS): 200,
    (SYNC_SQLITE, WIRE): 100,
    (QUART_SQLITE, IN_PROCESS): 300,
    (QUART_PG, IN_PROCESS): 200,
    (QUART_PG, WIRE): 100,
    (FLASK_ASYNC_PG, IN_PROCESS): 60,
    (FLASK_ASYNC_PG, WIRE): 60,
}
SYNC_GOALS = {HAND: 0.95, LITE: 2.5}
QUART_GOALS = {HAND: 0.95}
FLASK_ASYNC_GOALS = {NULLPOOL: 3.0}


@dataclass
class Backends:
    """PostgreSQL backend pids a Flask async variant's views saw, and its pool's limits."""

    group: str
    variant: str
    pids: set[int] = field(default_factory=set)
    requests: int = 0  # responses seen, warm-up included
    pool_limit: int | None = None
    checked_out: cabc.Callable[[], int] = lambda: 0

    def counting(self, check: Check) -> Check:
        """*check*, also counting the responses."""

        def counted(body: bytes) -> None:
            check(body)
            self.requests += 1

        return counted


@dataclass
class Context:
    stack: contextlib.ExitStack
    dbs: Databases
    runner: asyncio.Runner  # the loop the in-process Quart apps run on
    client: httpx.Client
    scale: float
    backends: list[Backends] = field(default_factory=list)

    def group(self, title: str, transport: str, goals: dict[str, float]) -> Group:
        requests = max(1, round(REQUESTS[title, transport] * self.scale))
        return Group(title, transport, requests, goals=dict(goals))


def _skip(group: Group, names: cabc.Iterable[str], reason: str) -> Group:
    def never(count: int) -> tuple[float, float]:
        raise BenchError(f"{group.key} is skipped: {reason}")

    group.variants = [Variant(name, never) for name in names]
    group.skipped = reason
    return group


def _dispose_on(runner: asyncio.Runner, engine: AsyncEngine) -> None:
    runner.run(engine.dispose())


def sync_group(ctx: Context, title: str, transport: str, url: str | None) -> Group:
    group = ctx.group(title, transport, SYNC_GOALS)
    if url is None:
        return _skip(group, sync_flask.BUILDERS, ctx.dbs.pg_skipped)
    for name, build in sync_flask.BUILDERS.items():
        made = build(ctx.dbs, url)
        ctx.stack.callback(made.close)
        label = f"{group.key} {name}"
        check = expect(sync_flask.BODY)
        if transport == IN_PROCESS:
            hit = timed_calls(wsgi_call(made.app, sync_flask.PATH), check, label)
        else:
            base = ctx.stack.enter_context(serving_wsgi(made.app))
            hit = http_hit(ctx.client, base + sync_flask.PATH, check, label)
        group.variants.append(Variant(name, hit))
    return group


def quart_group(ctx: Context, title: str, transport: str, url: str | None) -> Group:
    group = ctx.group(title, transport, QUART_GOALS)
    if url is None:
        return _skip(group, quart_apps.BUILDERS, ctx.dbs.pg_skipped)
    for name, build in quart_apps.BUILDERS.items():
        made = build(ctx.dbs, url)
        label = f"{group.key} {name}"
        check = expect(quart_apps.BODY)
        if transport == IN_PROCESS:
            for engine in made.engines:
                ctx.stack.callback(_dispose_on, ctx.runner, engine)
            hit = asgi_hit(ctx.runner, made.app, quart_apps.PATH, check, label)
        else:
            base = ctx.stack.enter_context(serving_asgi(made.app, made.engines))
            hit = http_hit(ctx.client, base + quart_apps.PATH, check, label)
        group.variants.append(Variant(name, hit))
    return group


def flask_async_group(ctx: Context, transport: str, url: str | None) -> Group:
    group = ctx.group(FLASK_ASYNC_PG, transport, FLASK_ASYNC_GOALS)
    if url is None:
        return _skip(group, flask_async_asyncpg.BUILDERS, ctx.dbs.pg_skipped)
    for name, build in flask_async_asyncpg.BUILDERS.items():
        made = build(ctx.dbs, url)
        ctx.stack.callback(made.close)
        seen = Backends(
            group.key,
            name,
            pool_limit=flask_async_asyncpg.pool_limit(made.engine),
            checked_out=functools.partial(flask_async_asyncpg.checked_out, made.engine),
        )
        ctx.backends.append(seen)
        label = f"{group.key} {name}"
        check = seen.counting(flask_async_asyncpg.pid_check(seen.pids))
        if transport == IN_PROCESS:
            hit = timed_calls(wsgi_call(made.app, flask_async_asyncpg.PATH), check, label)
        else:
            base = ctx.stack.enter_context(serving_wsgi(made.app))
            hit = http_hit(ctx.client, base + flask_async_asyncpg.PATH, check, label)
        group.variants.append(Variant(name, hit))
    return group


def build_groups(ctx: Context, wire: bool, only: str | None = None) -> list[Group]:
    """Every group, in report order; PostgreSQL groups are skipped when it does not answer.

    With *only*, just the groups whose name contains it (case-insensitive) are built.
    """
    dbs = ctx.dbs
    pg = dbs.pg_url is not None
    psycopg = dbs.postgresql("psycopg") if pg else None
    asyncpg = dbs.postgresql("asyncpg") if pg else None
    plan: list[tuple[str, str, cabc.Callable[[], Group]]] = [
        (SYNC_SQLITE, IN_PROCESS, lambda: sync_group(ctx, SYNC_SQLITE, IN_PROCESS, dbs.sqlite())),
        (SYNC_PG, IN_PROCESS, lambda: sync_group(ctx, SYNC_PG, IN_PROCESS, psycopg)),
        (
            QUART_SQLITE,
            IN_PROCESS,
            lambda: quart_group(ctx, QUART_SQLITE, IN_PROCESS, dbs.sqlite("aiosqlite")),
        ),
        (QUART_PG, IN_PROCESS, lambda: quart_group(ctx, QUART_PG, IN_PROCESS, asyncpg)),
        (FLASK_ASYNC_PG, IN_PROCESS, lambda: flask_async_group(ctx, IN_PROCESS, asyncpg)),
    ]
    if wire:
        plan += [
            (SYNC_SQLITE, WIRE, lambda: sync_group(ctx, SYNC_SQLITE, WIRE, dbs.sqlite())),
            (QUART_PG, WIRE, lambda: quart_group(ctx, QUART_PG, WIRE, asyncpg)),
            (FLASK_ASYNC_PG, WIRE, lambda: flask_async_group(ctx, WIRE, asyncpg)),
        ]
    wanted = (only or "").lower()
    return [
        build() for title, transport, build in plan if wanted in f"{title} ({transport})".lower()
    ]
