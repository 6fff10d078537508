"""Tenants for the ``EngineRegistry`` tests: databases, a pool tracker, and apps serving them.

One database per tenant (SQLite files, or PostgreSQL databases beside the test database),
each with the ``asse_test_note`` table; a :class:`PoolTracker` that counts each tenant's
connections and where they were closed; Flask and Quart apps whose view writes a note for
its tenant and returns the tenants it can see. The fixtures here (``pg_tenants``,
``sync_tenants``, ``async_tenants``) are imported by the test modules that use them.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc as cabc
import contextvars
import sqlite3
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, String, create_engine, delete, event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from async_scoped_session_ext import (
    EngineRegistry,
    async_scoped_session,
    flask_scoped_session,
)
from async_scoped_session_ext._frameworks import current_app_context

from .environment import HAS_QUART
from .extra_databases import database_url, postgres_databases

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

TENANTS = ["t0", "t1", "t2", "t3", "t4"]


class TenantBase(DeclarativeBase):
    pass


class Note(TenantBase):
    __tablename__ = "asse_test_note"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(String(50))


# -- tenant databases ------------------------------------------------------------------


class Tenants:
    """One database per tenant of one backend; ``url(tenant)`` is the registry's url_for."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls

    def url(self, tenant: str) -> str:
        return self.urls[tenant]


def sqlite_tenants(directory: Path, tenants: list[str]) -> None:
    """A SQLite file ``<tenant>.db`` in *directory* per tenant, with the notes table."""
    for tenant in tenants:
        with sqlite3.connect(directory / f"{tenant}.db") as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS asse_test_note"
                " (id INTEGER PRIMARY KEY, tenant VARCHAR(50) NOT NULL)"
            )
        conn.close()


@pytest.fixture(scope="module")
def pg_tenants() -> cabc.Iterator[dict[str, str]]:
    """A PostgreSQL database per tenant, with the notes table, for this module."""
    with postgres_databases(*TENANTS) as names:
        for name in names.values():
            engine = create_engine(database_url(name, "psycopg"))
            TenantBase.metadata.create_all(engine)
            engine.dispose()
        yield names


def _tenants(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Tenants:
    if backend in ("sqlite", "aiosqlite"):
        sqlite_tenants(tmp_path, TENANTS)
        scheme = "sqlite" if backend == "sqlite" else "sqlite+aiosqlite"
        return Tenants({tenant: f"{scheme}:///{tmp_path / tenant}.db" for tenant in TENANTS})
    names: dict[str, str] = request.getfixturevalue("pg_tenants")
    for name in names.values():  # start empty
        engine = create_engine(database_url(name, "psycopg"))
        with engine.begin() as conn:
            conn.execute(delete(Note))
        engine.dispose()
    driver = "psycopg" if backend == "postgresql" else "asyncpg"
    return Tenants({tenant: database_url(names[tenant], driver) for tenant in TENANTS})


@pytest.fixture
def sync_tenants(sync_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Tenants:
    """Tenant databases for pysqlite (files) or psycopg."""
    return _tenants(sync_backend, tmp_path, request)


@pytest.fixture
def async_tenants(async_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Tenants:
    """Tenant databases for aiosqlite (files) or asyncpg."""
    return _tenants(async_backend, tmp_path, request)


# -- watching engines ------------------------------------------------------------------


class PoolTracker:
    """Counts the connections each tenant's engines opened and closed, and where they closed.

    Views call :meth:`sync` / :meth:`async_` instead of ``registry[tenant]``: that watches a
    new engine before its first connection, and records which context used which session.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.opened: collections.Counter[str] = collections.Counter()
        self.closed: collections.Counter[str] = collections.Counter()
        self.close_loops: list[asyncio.AbstractEventLoop | None] = []
        self.engines: list[Engine] = []  # strong references: ids are never reused
        #: (session, app context) for every use; both kept alive so ids stay unique.
        self.uses: list[tuple[object, object]] = []
        self.alive_seen: list[int] = []

    def watch(self, scoped: t.Any, tenant: str) -> None:
        bind = scoped.session_factory.kw["bind"]
        engine: Engine = bind.sync_engine if isinstance(bind, AsyncEngine) else bind
        with self._lock:
            if any(known is engine for known in self.engines):
                return
            self.engines.append(engine)

        def connected(*args: object) -> None:
            with self._lock:
                self.opened[tenant] += 1

        def closed(*args: object) -> None:
            with self._lock:
                self.closed[tenant] += 1
                self.close_loops.append(asyncio._get_running_loop())

        event.listen(engine, "connect", connected)
        event.listen(engine, "close", closed)

    def _use(self, registry: EngineRegistry, scoped: t.Any, tenant: str) -> None:
        self.watch(scoped, tenant)
        alive = len(registry)  # not under self._lock: the registry's lock comes first
        with self._lock:
            self.uses.append((scoped(), current_app_context()))
            self.alive_seen.append(alive)

    def sync(self, registry: EngineRegistry, tenant: str) -> flask_scoped_session[Session]:
        scoped = t.cast("flask_scoped_session[Session]", registry[tenant])
        self._use(registry, scoped, tenant)
        return scoped

    def async_(self, registry: EngineRegistry, tenant: str) -> async_scoped_session[AsyncSession]:
        scoped = t.cast("async_scoped_session[AsyncSession]", registry[tenant])
        self._use(registry, scoped, tenant)
        return scoped

    def open_connections(self) -> int:
        with self._lock:
            return sum(self.opened.values()) - sum(self.closed.values())

    def assert_one_context_per_session(self) -> None:
        contexts: dict[int, set[int]] = collections.defaultdict(set)
        for session, ctx in self.uses:
            contexts[id(session)].add(id(ctx))
        assert all(len(owners) == 1 for owners in contexts.values())


def wait_until(predicate: t.Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


async def await_until(predicate: t.Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- apps ------------------------------------------------------------------------------


def flask_app(registry: EngineRegistry, tracker: PoolTracker) -> Flask:
    """A Flask app whose views write their tenant's id and read back what they can see."""
    app = Flask(__name__)
    # The app's own session, initialised before serving: a Flask app whose scoped sessions
    # all come from a registry fails its first request (see test_flask_app_with_only_a_registry
    # in tests/test_registry_apps.py).
    if registry.is_async:
        async_scoped_session(async_sessionmaker(), app)
    else:
        flask_scoped_session(sessionmaker(), app)
    registry.init_app(app)

    if registry.is_async:

        @app.post("/<tenant>")
        async def write_async(tenant: str) -> dict[str, t.Any]:
            session = tracker.async_(registry, tenant)
            session.add(Note(tenant=tenant))
            await session.commit()
            seen = set(await session.scalars(select(Note.tenant)))
            return {"seen": sorted(seen)}

    else:

        @app.post("/<tenant>")
        def write(tenant: str) -> dict[str, t.Any]:
            session = tracker.sync(registry, tenant)
            session.add(Note(tenant=tenant))
            session.commit()
            return {"seen": sorted(set(session.scalars(select(Note.tenant))))}

    return app


def quart_app(registry: EngineRegistry, tracker: PoolTracker) -> Quart:
    """The same view in Quart; the app awaits ``registry.aclose()`` after serving."""
    app = Quart(__name__)
    registry.init_app(app)

    @app.post("/<tenant>")
    async def write(tenant: str) -> dict[str, t.Any]:
        session = tracker.async_(registry, tenant)
        session.add(Note(tenant=tenant))
        await session.commit()
        return {"seen": sorted(set(await session.scalars(select(Note.tenant))))}

    return app


def post(app: Flask, tenant: str) -> list[str]:
    """POST for *tenant* in a context of its own (never an app context pushed by the test)."""
    response = contextvars.Context().run(app.test_client().post, f"/{tenant}")
    assert response.status_code == 200, response.text
    return t.cast(list[str], response.json["seen"])  # type: ignore[index]


async def apost(app: Quart, tenant: str) -> list[str]:
    """POST for *tenant* in a task with a context of its own."""

    async def run() -> list[str]:
        response = await app.test_client().post(f"/{tenant}")
        assert response.status_code == 200, await response.get_data(as_text=True)
        return t.cast(list[str], (await response.get_json())["seen"])

    return await asyncio.create_task(run(), context=contextvars.Context())


def closed_everything(registry: EngineRegistry, tracker: PoolTracker) -> None:
    """Close the registry and check that every connection its engines opened was closed."""
    registry.close()
    wait_until(lambda: tracker.open_connections() == 0)
    assert len(registry) == 0
    assert registry.created == registry.disposed
