"""Build every benchmark group: its apps, servers and how each variant is driven.

Everything made here is closed by the caller's :class:`contextlib.ExitStack`, in reverse:
servers stop and engines are disposed (each on the loop that owns its pool).
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import contextlib
import functools
import typing as t
from dataclasses import dataclass, field

import httpx
from sqlalchemy import literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Select

from . import flask_async_asyncpg, quart_apps, sync_flask
from .db import Databases
from .drivers import asgi_hit, http_hit, serving_asgi, serving_wsgi, wsgi_call
from .measure import (
    FLOOR,
    FSA,
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
#: This benchmark's SQLite groups run ``select 1`` (bench.load's select the row).
SYNC_SQLITE_ONE = f"{SYNC_SQLITE}, select 1"
QUART_SQLITE_ONE = f"{QUART_SQLITE}, select 1"

#: Requests per variant per round at ``--scale 1``, by (title, transport).
REQUESTS = {
    (SYNC_SQLITE_ONE, IN_PROCESS): 300,
    (SYNC_PG, IN_PROCESS): 200,
    (SYNC_SQLITE_ONE, WIRE): 100,
    (QUART_SQLITE_ONE, IN_PROCESS): 300,
    (QUART_PG, IN_PROCESS): 200,
    (QUART_PG, WIRE): 100,
    (FLASK_ASYNC_PG, IN_PROCESS): 60,
    (FLASK_ASYNC_PG, WIRE): 60,
}
#: Goals (the issue "Scoping for free"), by (title, transport): the minimum ``ours ÷ variant``
#: throughput ratio per variant. Groups not named here have none: over the wire the HTTP
#: server and client dilute every ratio towards 1 (see bench/README.md).
RATIO_GOALS: dict[tuple[str, str], dict[str, float]] = {
    (SYNC_SQLITE_ONE, IN_PROCESS): {HAND: 0.99, FSA: 1.0, LITE: 2.5},
    (SYNC_PG, IN_PROCESS): {FSA: 1.0},
    (QUART_SQLITE_ONE, IN_PROCESS): {HAND: 0.99},
    (FLASK_ASYNC_PG, IN_PROCESS): {NULLPOOL: 3.0},
    (FLASK_ASYNC_PG, WIRE): {NULLPOOL: 3.0},
}
#: The most µs per request ours may cost over a variant, by (title, transport).
US_GOALS: dict[tuple[str, str], dict[str, float]] = {
    (SYNC_SQLITE_ONE, IN_PROCESS): {HAND: 5.0},
    (QUART_SQLITE_ONE, IN_PROCESS): {HAND: 5.0},
}

#: The SQLite groups' query: the cheapest there is, so that the session handling is most of
#: a request's database cost. The PostgreSQL groups select the item's row.
SELECT_ONE: Select[t.Any] = select(literal_column("1"))
SELECT_ONE_BODY = b"1"


@dataclass(frozen=True)
class SelectOne(Databases):
    """The same databases, with ``select 1`` as the views' query (the floor is unchanged)."""

    @property
    def query(self) -> Select[t.Any]:
        return SELECT_ONE


def select_one(dbs: Databases) -> SelectOne:
    """*dbs*, for app builders whose views should run ``select 1``."""
    return SelectOne(**vars(dbs))


def variant_check(name: str, body: bytes, query_body: bytes | None) -> Check:
    """What variant *name* must answer: *body*, or *query_body* if given (not the floor)."""
    return expect(body if query_body is None or name == FLOOR else query_body)


def wanted(key: str, only: str | None) -> bool:
    """Whether the group *key* is selected by ``--only`` *only* (case-insensitive)."""
    return (only or "").lower() in key.lower()


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

    def scaled(self, requests: int) -> int:
        """*requests* per variant per round, times ``--scale`` (at least 1)."""
        return max(1, round(requests * self.scale))

    def group(self, title: str, transport: str) -> Group:
        """An empty group with its request count and goals."""
        return Group(
            title,
            transport,
            self.scaled(REQUESTS[title, transport]),
            goals=dict(RATIO_GOALS.get((title, transport), {})),
            limits_us=dict(US_GOALS.get((title, transport), {})),
        )


def _skip(group: Group, names: cabc.Iterable[str], reason: str) -> Group:
    def never(count: int) -> tuple[float, float]:
        raise BenchError(f"{group.key} is skipped: {reason}")

    group.variants = [Variant(name, never) for name in names]
    group.skipped = reason
    return group


def dispose_on(runner: asyncio.Runner, engine: AsyncEngine) -> None:
    """Dispose *engine* on *runner*'s loop, the one its pool's connections belong to."""
    runner.run(engine.dispose())


def sync_group(
    ctx: Context, title: str, transport: str, url: str | None, query_body: bytes | None = None
) -> Group:
    """The sync Flask variants on *url* (skipped if ``None``).

    With *query_body*, the views run ``select 1`` and answer it (the floor is unchanged).
    """
    group = ctx.group(title, transport)
    if url is None:
        return _skip(group, sync_flask.BUILDERS, ctx.dbs.pg_skipped)
    dbs = ctx.dbs if query_body is None else select_one(ctx.dbs)
    for name, build in sync_flask.BUILDERS.items():
        made = build(dbs, url)
        ctx.stack.callback(made.close)
        label = f"{group.key} {name}"
        check = variant_check(name, sync_flask.BODY, query_body)
        if transport == IN_PROCESS:
            hit = timed_calls(wsgi_call(made.app, sync_flask.PATH), check, label)
        else:
            base = ctx.stack.enter_context(serving_wsgi(made.app))
            hit = http_hit(ctx.client, base + sync_flask.PATH, check, label)
        group.variants.append(Variant(name, hit))
    return group


def quart_group(
    ctx: Context, title: str, transport: str, url: str | None, query_body: bytes | None = None
) -> Group:
    """The Quart variants on *url* (skipped if ``None``); *query_body* as for sync_group."""
    group = ctx.group(title, transport)
    if url is None:
        return _skip(group, quart_apps.BUILDERS, ctx.dbs.pg_skipped)
    dbs = ctx.dbs if query_body is None else select_one(ctx.dbs)
    for name, build in quart_apps.BUILDERS.items():
        made = build(dbs, url)
        label = f"{group.key} {name}"
        check = variant_check(name, quart_apps.BODY, query_body)
        if transport == IN_PROCESS:
            for engine in made.engines:
                ctx.stack.callback(dispose_on, ctx.runner, engine)
            hit = asgi_hit(ctx.runner, made.app, quart_apps.PATH, check, label)
        else:
            base = ctx.stack.enter_context(serving_asgi(made.app, made.engines))
            hit = http_hit(ctx.client, base + quart_apps.PATH, check, label)
        group.variants.append(Variant(name, hit))
    return group


def flask_async_group(ctx: Context, transport: str, url: str | None) -> Group:
    group = ctx.group(FLASK_ASYNC_PG, transport)
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
    one = SELECT_ONE_BODY
    plan: list[tuple[str, str, cabc.Callable[[], Group]]] = [
        (
            SYNC_SQLITE_ONE,
            IN_PROCESS,
            lambda: sync_group(ctx, SYNC_SQLITE_ONE, IN_PROCESS, dbs.sqlite(), one),
        ),
        (SYNC_PG, IN_PROCESS, lambda: sync_group(ctx, SYNC_PG, IN_PROCESS, psycopg)),
        (
            QUART_SQLITE_ONE,
            IN_PROCESS,
            lambda: quart_group(ctx, QUART_SQLITE_ONE, IN_PROCESS, dbs.sqlite("aiosqlite"), one),
        ),
        (QUART_PG, IN_PROCESS, lambda: quart_group(ctx, QUART_PG, IN_PROCESS, asyncpg)),
        (FLASK_ASYNC_PG, IN_PROCESS, lambda: flask_async_group(ctx, IN_PROCESS, asyncpg)),
    ]
    if wire:
        plan += [
            (
                SYNC_SQLITE_ONE,
                WIRE,
                lambda: sync_group(ctx, SYNC_SQLITE_ONE, WIRE, dbs.sqlite(), one),
            ),
            (QUART_PG, WIRE, lambda: quart_group(ctx, QUART_PG, WIRE, asyncpg)),
            (FLASK_ASYNC_PG, WIRE, lambda: flask_async_group(ctx, WIRE, asyncpg)),
        ]
    return [build() for title, transport, build in plan if wanted(f"{title} ({transport})", only)]
