"""``EngineRegistry(commit_on_success=True)``: each tenant session a request used is committed
before a response below 400 is sent, and rolled back otherwise; one hook per app covers the
engines made later too (an evicted tenant's and the next one's). Sync Flask, Flask async and
Quart, on SQLite files and PostgreSQL databases, one per tenant."""

from __future__ import annotations

import contextvars
import typing as t

from flask import Flask
from sqlalchemy import create_engine, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import EngineRegistry, async_scoped_session, flask_scoped_session

from .support import tenants
from .support.engines import sync_url_of
from .support.environment import needs_quart
from .support.tenants import Note, Tenants

pg_tenants = tenants.pg_tenants
sync_tenants = tenants.sync_tenants
async_tenants = tenants.async_tenants

#: Requests and what each tenant holds after them: two tenants committed together, a
#: tenant rolled back by a 400, then a third and a fourth tenant (max_engines=2 evicts).
REQUESTS = [("t0,t1", 200), ("t2", 400), ("t3", 200), ("t4", 201)]
EXPECTED = {"t0": 1, "t1": 1, "t2": 0, "t3": 1, "t4": 1}


def rows(databases: Tenants) -> dict[str, int]:
    """How many notes each tenant's database holds (read with a sync driver)."""
    counts = {}
    for tenant in EXPECTED:
        engine = create_engine(sync_url_of(databases.url(tenant)))
        with engine.connect() as conn:
            counts[tenant] = conn.scalar(select(func.count()).select_from(Note)) or 0
        engine.dispose()
    return counts


ADD = "/add/<names>/<int:status>"


def async_add(registry: EngineRegistry) -> t.Callable[..., t.Awaitable[tuple[str, int]]]:
    """The async view (Flask async, Quart): add and flush a note for each tenant named."""

    async def add(names: str, status: int) -> tuple[str, int]:
        for tenant in names.split(","):
            registry[tenant].add(Note(tenant=tenant))
            await t.cast(t.Any, registry[tenant]).flush()
        return "done", status

    return add


def flask_app(registry: EngineRegistry) -> Flask:
    """A view that adds (and flushes) a note for each tenant named, then answers *status*."""
    app = Flask(__name__)
    # The app's own session first: see test_flask_app_with_only_a_registry.
    if registry.is_async:
        async_scoped_session(async_sessionmaker(), app)
        app.add_url_rule(ADD, view_func=async_add(registry))
    else:
        flask_scoped_session(sessionmaker(), app)

        @app.get(ADD)
        def add(names: str, status: int) -> tuple[str, int]:
            for tenant in names.split(","):
                registry[tenant].add(Note(tenant=tenant))
                registry[tenant].flush()
            return "done", status

    registry.init_app(app)
    return app


def get(app: Flask, path: str) -> int:
    """GET *path* in a context of its own; the status."""
    return int(contextvars.Context().run(app.test_client().get, path).status_code)


def test_flask_sync(sync_tenants: Tenants) -> None:
    """Sync Flask: committed below 400, rolled back from 400, new engines included."""
    check_flask(sync_tenants, is_async=False)


def test_flask_async(async_tenants: Tenants) -> None:
    """Flask async views: the same, on the shared loop."""
    check_flask(async_tenants, is_async=True)


def check_flask(databases: Tenants, *, is_async: bool) -> None:
    """Send ``REQUESTS`` to a Flask app of a committing registry; check ``EXPECTED``."""
    registry = EngineRegistry(
        databases.url, is_async=is_async, max_engines=2, commit_on_success=True
    )
    app = flask_app(registry)
    try:
        assert [get(app, f"/add/{names}/{status}") for names, status in REQUESTS] == [
            status for _, status in REQUESTS
        ]
        assert rows(databases) == EXPECTED
    finally:
        registry.close()


@needs_quart
async def test_quart(async_tenants: Tenants) -> None:
    """Quart: the same."""
    from quart import Quart

    registry = EngineRegistry(
        async_tenants.url, is_async=True, max_engines=2, commit_on_success=True
    )
    app = Quart(__name__)
    registry.init_app(app)
    app.add_url_rule(ADD, view_func=async_add(registry))

    async with app.test_app() as test_app:
        client = test_app.test_client()
        statuses = [(await client.get(f"/add/{n}/{s}")).status_code for n, s in REQUESTS]
    assert statuses == [status for _, status in REQUESTS]
    assert rows(async_tenants) == EXPECTED


def test_off_by_default(sync_tenants: Tenants) -> None:
    """Without the option nothing is committed: the flushed notes are rolled back."""
    registry = EngineRegistry(sync_tenants.url, max_engines=2)
    app = flask_app(registry)
    try:
        assert get(app, "/add/t0,t1/200") == 200
        assert rows(sync_tenants) == dict.fromkeys(EXPECTED, 0)
    finally:
        registry.close()
