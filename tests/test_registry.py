"""EngineRegistry: LRU bound, eviction and deferred disposal, loops, concurrency, isolation."""

from __future__ import annotations

import asyncio
import collections
import collections.abc as cabc
import contextvars
import logging
import random
import sqlite3
import threading
import time
import traceback
import typing as t
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, String, create_engine, delete, event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from async_scoped_session_ext import (
    EngineRegistry,
    async_scoped_session,
    current_session,
    flask_scoped_session,
    get_scoped_session,
)
from async_scoped_session_ext._frameworks import current_app_context
from async_scoped_session_ext._runner import runner

from .support.environment import HAS_QUART, needs_quart
from .support.extra_databases import database_url, postgres_databases

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


def _sqlite_tenants(directory: Path, tenants: list[str]) -> None:
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
        _sqlite_tenants(tmp_path, TENANTS)
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
    # all come from a registry fails its first request (test_flask_app_with_only_a_registry).
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


# -- sync: LRU, eviction, deferred disposal --------------------------------------------


def test_lru_order_bound_and_idle_eviction(sync_tenants: Tenants) -> None:
    """The least recently used key goes first; an idle evicted engine is disposed at once."""
    tracker = PoolTracker()
    registry = EngineRegistry(sync_tenants.url, max_engines=2)
    app = flask_app(registry, tracker)
    try:
        for tenant in ("t0", "t1", "t0", "t2"):
            assert post(app, tenant) == [tenant]
        assert registry.keys() == ["t0", "t2"]
        assert (registry.created, registry.disposed, len(registry)) == (3, 1, 2)
        assert tracker.closed["t1"] == tracker.opened["t1"] == 1  # its pool, closed
        assert tracker.closed["t0"] == 0
        assert repr(registry) == "<EngineRegistry 2/2 [t0, t2]>"

        assert post(app, "t1") == ["t1"]  # back, with a new engine; t0 goes now
        assert registry.keys() == ["t2", "t1"]
        assert (registry.created, registry.disposed) == (4, 2)
        assert tracker.closed["t0"] == tracker.opened["t0"]
    finally:
        closed_everything(registry, tracker)


def test_busy_engine_disposal_waits_for_its_context(sync_tenants: Tenants) -> None:
    """An evicted engine with a session open in a live context is disposed once it ends."""
    tracker = PoolTracker()
    registry = EngineRegistry(sync_tenants.url, max_engines=2)
    app = flask_app(registry, tracker)
    try:
        with app.app_context():
            session = tracker.sync(registry, "t0")
            session.add(Note(tenant="t0"))
            session.flush()  # a transaction is open: a connection is checked out
            post(app, "t1")
            post(app, "t2")  # evicts t0, which is busy
            assert registry.keys() == ["t1", "t2"]
            assert (registry.created, registry.disposed, len(registry)) == (3, 0, 3)
            assert registry.reap() == 1
            assert tracker.closed["t0"] == 0
            session.commit()  # the busy session keeps working
            assert set(session.scalars(select(Note.tenant))) == {"t0"}
        # the teardown closed the session as usual; the next registry[key] disposes t0
        assert tracker.closed["t0"] == 0
        registry["t1"]
        assert (registry.disposed, len(registry)) == (1, 2)
        assert tracker.closed["t0"] == tracker.opened["t0"] == 1
    finally:
        closed_everything(registry, tracker)


def test_checked_out_connection_defers_disposal(sync_tenants: Tenants) -> None:
    """Outside any context, a connection checked out of an evicted engine defers disposal."""
    tracker = PoolTracker()
    registry = EngineRegistry(sync_tenants.url, max_engines=1)
    scoped = t.cast("flask_scoped_session[Session]", registry["t0"])
    tracker.watch(scoped, "t0")
    try:
        with scoped.fresh() as session:
            session.execute(select(Note.id))
            registry["t1"]  # evicts t0 while its connection is checked out
            assert (registry.disposed, registry.reap()) == (0, 1)
            session.execute(select(Note.id))  # still works
        assert registry.reap() == 0
        assert registry.disposed == 1 and tracker.closed["t0"] == tracker.opened["t0"] == 1
    finally:
        closed_everything(registry, tracker)


def test_scoped_session_outlives_eviction_within_its_context(sync_tenants: Tenants) -> None:
    """``registry[key]`` opens the context's session, so eviction cannot pull the engine away.

    Asking again for the evicted key in that context brings back the same engine and session.
    """
    tracker = PoolTracker()
    registry = EngineRegistry(sync_tenants.url, max_engines=2)
    app = flask_app(registry, tracker)
    try:
        with app.app_context():
            scoped = t.cast("flask_scoped_session[Session]", registry["t0"])
            tracker.watch(scoped, "t0")
            session = scoped()
            post(app, "t1")
            post(app, "t2")  # t0 is evicted before its session was ever used
            assert scoped.execute(select(Note.id)).all() == []
            assert registry["t0"] is scoped and scoped() is session
            assert registry.created == 3  # no second engine for t0
            assert registry.keys() == ["t2", "t0"]
        registry.reap()
        assert registry.disposed == 1  # t1, idle once its request ended
    finally:
        closed_everything(registry, tracker)


def test_concurrent_first_requests_make_one_engine(sync_tenants: Tenants) -> None:
    """32 threads asking for one new key at once make one engine and 32 sessions."""
    tracker = PoolTracker()
    registry = EngineRegistry(sync_tenants.url, max_engines=2)
    app = flask_app(registry, tracker)
    barrier = threading.Barrier(32)
    seen: list[list[str]] = []

    def request() -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post("/t0")
        seen.append(response.json["seen"])  # type: ignore[index]

    threads = [threading.Thread(target=request) for _ in range(32)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen == [["t0"]] * 32
        assert registry.created == 1
        assert len({id(session) for session, _ in tracker.uses}) == 32
        tracker.assert_one_context_per_session()
    finally:
        closed_everything(registry, tracker)


WORKERS = 4
PLANS = st.lists(
    st.tuples(st.integers(0, WORKERS - 1), st.sampled_from(TENANTS)), min_size=1, max_size=24
)
PROPERTY_SETTINGS = settings(
    max_examples=12,
    deadline=timedelta(seconds=20),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(plan=PLANS)
def test_tenant_isolation_across_threads(
    sync_tenants: Tenants, plan: list[tuple[int, str]]
) -> None:
    """Any interleaving of tenant requests over threads: each sees only its tenant's rows."""
    tracker = PoolTracker()
    registry = EngineRegistry(sync_tenants.url, max_engines=2)
    app = flask_app(registry, tracker)
    barrier = threading.Barrier(WORKERS)
    results: list[tuple[str, int, t.Any]] = []

    def work(worker: int) -> None:
        client = app.test_client()
        barrier.wait()
        for tenant in [tenant for w, tenant in plan if w == worker]:
            response = client.post(f"/{tenant}")
            results.append((tenant, response.status_code, response.json))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(r[0] for r in results) == sorted(tenant for _, tenant in plan)
        for tenant, status, body in results:
            assert (status, body["seen"]) == (200, [tenant])
        tracker.assert_one_context_per_session()
        assert max(tracker.alive_seen) <= registry.max_engines + WORKERS
        assert registry.reap() == 0 and len(registry) <= registry.max_engines
    finally:
        closed_everything(registry, tracker)


# -- async: Quart, and Flask's shared loop ---------------------------------------------


@needs_quart
async def test_async_lru_and_idle_eviction_on_the_loop(async_tenants: Tenants) -> None:
    """Quart: an idle evicted engine is disposed on the app's loop; shutdown disposes the rest."""
    tracker = PoolTracker()
    registry = EngineRegistry(async_tenants.url, is_async=True, max_engines=2)
    app = quart_app(registry, tracker)
    loop = asyncio.get_running_loop()
    async with app.test_app():
        for tenant in ("t0", "t1", "t0", "t2"):
            assert await apost(app, tenant) == [tenant]
        assert registry.keys() == ["t0", "t2"]
        assert (registry.created, registry.disposed, len(registry)) == (3, 1, 2)
        await await_until(lambda: tracker.closed["t1"] == 1)
        assert tracker.closed["t0"] == 0
    # after_serving awaited registry.aclose()
    assert (registry.created, registry.disposed, len(registry)) == (3, 3, 0)
    assert tracker.open_connections() == 0
    assert set(tracker.close_loops) == {loop}


@needs_quart
async def test_async_busy_engine_disposal_waits_for_its_context(async_tenants: Tenants) -> None:
    """Quart: an engine evicted while its session works in a context is disposed afterwards."""
    tracker = PoolTracker()
    registry = EngineRegistry(async_tenants.url, is_async=True, max_engines=2)
    app = quart_app(registry, tracker)
    loop = asyncio.get_running_loop()
    async with app.test_app():
        async with app.app_context():
            session = tracker.async_(registry, "t0")
            session.add(Note(tenant="t0"))
            await session.flush()
            await apost(app, "t1")
            await apost(app, "t2")
            assert (registry.disposed, registry.reap(), len(registry)) == (0, 1, 3)
            await session.commit()
            assert set(await session.scalars(select(Note.tenant))) == {"t0"}
            assert tracker.closed["t0"] == 0
        assert registry.reap() == 0
        await await_until(lambda: tracker.closed["t0"] == tracker.opened["t0"] == 1)
    assert tracker.open_connections() == 0
    assert set(tracker.close_loops) == {loop}


@needs_quart
async def test_async_engine_reaped_from_a_thread_is_disposed_on_its_loop(
    async_tenants: Tenants,
) -> None:
    """Reaping from another thread disposes the engine on its app's loop, never another one.

    The shared Flask loop is running here too, as it does in any process that served Flask.
    """
    runner.loop  # noqa: B018 - start the shared loop, a wrong place to dispose Quart's engine
    tracker = PoolTracker()
    registry = EngineRegistry(async_tenants.url, is_async=True, max_engines=1)
    app = quart_app(registry, tracker)
    loop = asyncio.get_running_loop()
    async with app.test_app():
        async with app.app_context():
            session = tracker.async_(registry, "t0")
            await session.execute(select(Note.id))
            await apost(app, "t1")  # evicts the busy t0
        assert await asyncio.to_thread(registry.reap) == 0
        await await_until(lambda: tracker.closed["t0"] == tracker.opened["t0"] == 1)
    assert tracker.open_connections() == 0
    assert set(tracker.close_loops) == {loop}


def test_flask_async_registry_disposes_on_the_shared_loop(async_tenants: Tenants) -> None:
    """Flask async views: evicted engines are disposed on the shared loop they were used on."""
    tracker = PoolTracker()
    registry = EngineRegistry(async_tenants.url, is_async=True, max_engines=1)
    app = flask_app(registry, tracker)
    try:
        for tenant in ("t0", "t1", "t0"):
            assert post(app, tenant) == [tenant]
        assert (registry.created, registry.disposed, len(registry)) == (3, 2, 1)
        wait_until(lambda: tracker.closed["t0"] == 1 and tracker.closed["t1"] == 1)
    finally:
        closed_everything(registry, tracker)  # close() from this thread, disposal on the loop
    assert set(tracker.close_loops) == {runner.loop}


def test_reaping_from_a_thread_never_waits_for_the_loop(tmp_path: Path) -> None:
    """A thread holding the registry's lock hands async disposal to the loop without waiting.

    Here the loop's thread is itself waiting for that lock: waiting for the loop would hang.
    """
    _sqlite_tenants(tmp_path, TENANTS)
    tracker = PoolTracker()
    registry = EngineRegistry(
        lambda tenant: f"sqlite+aiosqlite:///{tmp_path / tenant}.db", is_async=True, max_engines=1
    )
    app = flask_app(registry, tracker)
    post(app, "t0")  # t0's engine is now bound to the shared loop
    done = threading.Event()

    async def wants_the_lock() -> None:
        registry.keys()

    def evict_while_the_loop_waits() -> None:
        with registry._lock:
            waiting = asyncio.run_coroutine_threadsafe(wants_the_lock(), runner.loop)
            time.sleep(0.05)
            registry["t1"]  # evicts the idle t0: its disposal must go to the loop
        waiting.result(timeout=10)
        done.set()

    thread = threading.Thread(target=evict_while_the_loop_waits, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert done.is_set(), "the registry waited for a loop that waited for the registry"
    closed_everything(registry, tracker)


@needs_quart
async def test_async_concurrent_first_requests_make_one_engine(async_tenants: Tenants) -> None:
    """32 tasks asking for one new key at once make one engine and 32 sessions."""
    tracker = PoolTracker()
    registry = EngineRegistry(async_tenants.url, is_async=True, max_engines=2)
    app = quart_app(registry, tracker)
    async with app.test_app():
        seen = await asyncio.gather(*(apost(app, "t0") for _ in range(32)))
    assert seen == [["t0"]] * 32
    assert registry.created == 1
    assert len({id(session) for session, _ in tracker.uses}) == 32
    tracker.assert_one_context_per_session()
    assert tracker.open_connections() == 0


def test_flask_async_concurrent_first_requests_make_one_engine(async_tenants: Tenants) -> None:
    """32 threads calling Flask async views for one new key make one engine."""
    tracker = PoolTracker()
    registry = EngineRegistry(async_tenants.url, is_async=True, max_engines=2)
    app = flask_app(registry, tracker)
    barrier = threading.Barrier(32)
    statuses: list[int] = []

    def request() -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(client.post("/t0").status_code)

    threads = [threading.Thread(target=request) for _ in range(32)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 32
        assert registry.created == 1
        tracker.assert_one_context_per_session()
    finally:
        closed_everything(registry, tracker)


@needs_quart
@PROPERTY_SETTINGS
@given(plan=PLANS)
def test_tenant_isolation_across_tasks(async_tenants: Tenants, plan: list[tuple[int, str]]) -> None:
    """Any interleaving of tenant requests over tasks: each sees only its tenant's rows."""

    async def scenario() -> None:
        tracker = PoolTracker()
        registry = EngineRegistry(async_tenants.url, is_async=True, max_engines=2)
        app = quart_app(registry, tracker)
        results: list[tuple[str, list[str]]] = []

        async def work(worker: int) -> None:
            for tenant in [tenant for w, tenant in plan if w == worker]:
                results.append((tenant, await apost(app, tenant)))

        async with app.test_app():
            await asyncio.gather(*(work(w) for w in range(WORKERS)))
            assert registry.reap() == 0 and len(registry) <= registry.max_engines
        assert sorted(r[0] for r in results) == sorted(tenant for _, tenant in plan)
        assert all(seen == [tenant] for tenant, seen in results)
        tracker.assert_one_context_per_session()
        assert tracker.open_connections() == 0
        assert registry.created == registry.disposed

    asyncio.run(scenario())


# -- credentials -----------------------------------------------------------------------

SECRET_URL = "postgresql+psycopg://user:s3cret@127.0.0.1:1/x"


def test_credentials_hidden_in_reprs_keys_and_names() -> None:
    """No password in the registry's repr, its keys (with url_for) or its sessions' names."""
    by_tenant = EngineRegistry(lambda tenant: SECRET_URL.replace("/x", f"/{tenant}"))
    by_url = EngineRegistry()
    app = Flask(__name__)
    flask_scoped_session(sessionmaker(), app)
    by_tenant.init_app(app)
    by_url.init_app(app)
    try:
        by_tenant["acme"]
        by_url[SECRET_URL]
        assert repr(by_tenant) == "<EngineRegistry 1/8 [acme]>"
        assert by_tenant.keys() == ["acme"]
        assert repr(by_url) == "<EngineRegistry 1/8 [postgresql+psycopg://user:***@127.0.0.1:1/x]>"
        with app.app_context():
            with pytest.raises(KeyError) as info:
                get_scoped_session("nope")
        assert "s3cret" not in str(info.value)
    finally:
        by_tenant.close()
        by_url.close()


def test_credentials_hidden_in_errors_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """A failing connect and eviction: no password in the error, the traceback or any log."""
    caplog.set_level(logging.DEBUG)
    registry = EngineRegistry(max_engines=1)
    app = Flask(__name__)
    flask_scoped_session(sessionmaker(), app)
    registry.init_app(app)

    @app.get("/")
    def view() -> str:
        return str(t.cast(Session, registry[SECRET_URL]).execute(select(1)).scalar())

    with app.app_context():
        with pytest.raises(OperationalError) as info:
            t.cast(Session, registry[SECRET_URL]).execute(select(1))
    assert app.test_client().get("/").status_code == 500  # logged by Flask
    registry[SECRET_URL.replace("/x", "/y")]  # evicts the first engine: logged
    registry.close()
    text = "".join(traceback.format_exception(info.value))
    assert "Connection refused" in text and "s3cret" not in text
    assert "Exception on / [GET]" in caplog.text
    assert "Disposed the engine of postgresql+psycopg://user:***@127.0.0.1:1/x" in caplog.text
    assert "s3cret" not in caplog.text


@needs_quart
async def test_async_credentials_hidden_in_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same through Quart and asyncpg."""
    caplog.set_level(logging.DEBUG)
    url = SECRET_URL.replace("+psycopg", "+asyncpg")
    registry = EngineRegistry(is_async=True, max_engines=1)
    app = Quart(__name__)
    registry.init_app(app)

    @app.get("/")
    async def view() -> str:
        scoped = t.cast("async_scoped_session[AsyncSession]", registry[url])
        return str(await scoped.scalar(select(1)))

    async with app.test_app():
        async with app.app_context():
            with pytest.raises(OSError) as info:
                await t.cast("async_scoped_session[AsyncSession]", registry[url]).scalar(select(1))
        assert (await app.test_client().get("/")).status_code == 500
        registry[url.replace("/x", "/y")]
    text = "".join(traceback.format_exception(info.value))
    assert "s3cret" not in text
    assert "Disposed the engine of postgresql+asyncpg://user:***@127.0.0.1:1/x" in caplog.text
    assert "Exception on request GET /" in caplog.text
    assert "s3cret" not in caplog.text


# -- the app's own session and the registry's ------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_flask_app_with_only_a_registry(tmp_path: Path, is_async: bool) -> None:
    """A Flask app whose only scoped sessions come from a registry serves requests."""
    _sqlite_tenants(tmp_path, ["t0"])
    scheme = "sqlite+aiosqlite" if is_async else "sqlite"
    registry = EngineRegistry(lambda key: f"{scheme}:///{tmp_path / key}.db", is_async=is_async)
    app = Flask(__name__)
    app.testing = True  # exceptions propagate out of the test client
    registry.init_app(app)

    @app.get("/sync/<tenant>")
    def sync_view(tenant: str) -> str:
        return str(t.cast(Session, registry[tenant]).scalar(select(1)))

    @app.get("/async/<tenant>")
    async def async_view(tenant: str) -> str:
        scoped = t.cast("async_scoped_session[AsyncSession]", registry[tenant])
        return str(await scoped.scalar(select(1)))

    try:
        path = "/async/t0" if is_async else "/sync/t0"
        assert app.test_client().get(path).text == "1"
    finally:
        registry.close()


def test_current_session_is_never_a_tenants_session(tmp_path: Path) -> None:
    """In an app with only a registry, current_session does not stand for a tenant's session."""
    _sqlite_tenants(tmp_path, ["t0", "t1"])
    registry = EngineRegistry(lambda key: f"sqlite:///{tmp_path / key}.db")
    app = Flask(__name__)
    registry.init_app(app)
    try:
        with app.app_context():
            tenants = {id(registry["t0"]), id(registry["t1"])}
            try:
                default: object = current_session._get_current_object()
            except (AttributeError, RuntimeError, KeyError):
                default = None
            assert id(default) not in tenants
            assert id(getattr(app, "scoped_session", None)) not in tenants
    finally:
        registry.close()


def test_tenant_called_default_leaves_the_apps_session_alone(tmp_path: Path) -> None:
    """A tenant whose key is "default" does not become current_session."""
    _sqlite_tenants(tmp_path, ["default"])
    app = Flask(__name__)
    own = flask_scoped_session(sessionmaker(), app)
    registry = EngineRegistry(lambda key: f"sqlite:///{tmp_path / key}.db", app=app)
    try:
        with app.app_context():
            registry["default"]
            assert current_session._get_current_object() is own
            assert app.scoped_session is own  # type: ignore[attr-defined]
    finally:
        registry.close()


# -- many tenants ----------------------------------------------------------------------

MANY = [f"tenant{i:02d}" for i in range(50)]


def _many_tenant_registry(tmp_path: Path, scheme: str, **kw: t.Any) -> EngineRegistry:
    _sqlite_tenants(tmp_path, MANY)
    return EngineRegistry(lambda key: f"{scheme}:///{tmp_path / key}.db", max_engines=8, **kw)


def _report(phase: str, registry: EngineRegistry, tracker: PoolTracker, requests: int) -> None:
    print(
        f"{phase}: {requests} requests, engines created {registry.created}, disposed"
        f" {registry.disposed}, alive {len(registry)} (registered {len(registry.keys())}),"
        f" most alive during a request {max(tracker.alive_seen)}, connections opened"
        f" {sum(tracker.opened.values())}, closed {sum(tracker.closed.values())}"
    )


def test_many_tenants_through_flask(tmp_path: Path) -> None:
    """50 tenants, max_engines=8: cyclic, skewed and concurrent load; engine counts stay bounded."""
    tracker = PoolTracker()
    registry = _many_tenant_registry(tmp_path, "sqlite")
    app = flask_app(registry, tracker)
    try:
        # 1. every tenant in turn, 4 rounds: the LRU's worst case, every request a miss
        for _ in range(4):
            for tenant in MANY:
                assert post(app, tenant) == [tenant]
        _report("cyclic", registry, tracker, 200)
        assert (registry.created, registry.disposed, len(registry)) == (200, 192, 8)
        assert max(tracker.alive_seen) == 8
        assert tracker.open_connections() == 8  # one pooled connection per live engine

        # 2. skewed: tenant i is asked 1/(i+1) as often as tenant 0
        rng = random.Random(0)
        skewed = rng.choices(MANY, weights=[1 / (i + 1) for i in range(50)], k=400)
        before = registry.created
        for tenant in skewed:
            post(app, tenant)
        _report("skewed", registry, tracker, 400)
        print(f"skewed: hit rate {1 - (registry.created - before) / 400:.2f}")
        assert len(registry) == 8 and registry.created - registry.disposed == 8

        # 3. concurrent: 8 threads x 50 uniform requests; evicted engines may be busy
        def work(seed: int) -> None:
            client = app.test_client()
            for tenant in random.Random(seed).choices(MANY, k=50):
                assert client.post(f"/{tenant}").json == {"seen": [tenant]}

        tracker.alive_seen.clear()
        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _report("concurrent", registry, tracker, 400)
        assert max(tracker.alive_seen) <= registry.max_engines + 8
        assert registry.reap() == 0 and len(registry) == 8
        tracker.assert_one_context_per_session()
    finally:
        closed_everything(registry, tracker)
    _report("closed", registry, tracker, 1000)


@needs_quart
async def test_many_tenants_through_quart(tmp_path: Path) -> None:
    """50 tenants, max_engines=8, 16 concurrent requests at a time, on aiosqlite."""
    tracker = PoolTracker()
    registry = _many_tenant_registry(tmp_path, "sqlite+aiosqlite", is_async=True)
    app = quart_app(registry, tracker)
    rng = random.Random(1)
    plan = [rng.choice(MANY) for _ in range(400)]
    async with app.test_app():
        for start in range(0, len(plan), 16):
            batch = plan[start : start + 16]
            assert await asyncio.gather(*(apost(app, tenant) for tenant in batch)) == [
                [tenant] for tenant in batch
            ]
        _report("quart concurrent", registry, tracker, 400)
        assert max(tracker.alive_seen) <= registry.max_engines + 16
        assert registry.reap() == 0 and len(registry) == 8
    assert tracker.open_connections() == 0 and registry.created == registry.disposed
    _report("quart closed", registry, tracker, 400)
