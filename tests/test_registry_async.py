"""EngineRegistry, async: disposal on the loop the engine was used on (Quart's, Flask's shared
loop), reaping from another thread, and never waiting for a loop from under the lock; an
async registry used in sync code, an engine whose loop closed, a disposal that fails.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import NullPool

from async_scoped_session_ext import EngineRegistry, async_scoped_session
from async_scoped_session_ext._runner import runner

from .support import tenants
from .support.environment import HAS_QUART, needs_quart
from .support.tenants import (
    TENANTS,
    Note,
    PoolTracker,
    Tenants,
    apost,
    await_until,
    closed_everything,
    flask_app,
    post,
    quart_app,
    wait_until,
)
from .support.tenants import sqlite_tenants as _sqlite_tenants

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

pg_tenants = tenants.pg_tenants
async_tenants = tenants.async_tenants


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


# -- async engines in the wrong place: sync code, a closed loop, a failing disposal ----------


def test_async_registry_in_a_sync_view(tmp_path: Path) -> None:
    """A sync Flask view gets an async registry's session, and using it raises the usual error.

    ``registry[key]`` itself does not raise (it cannot open the context's session in sync
    code); the ``TypeError`` comes from using the session, and no engine is left busy.
    """
    _sqlite_tenants(tmp_path, ["t0"])
    registry = EngineRegistry(
        lambda tenant: f"sqlite+aiosqlite:///{tmp_path / tenant}.db", is_async=True
    )
    app = Flask(__name__)
    app.testing = True  # exceptions propagate out of the test client
    registry.init_app(app)
    handed_out: list[object] = []

    @app.post("/<tenant>")
    def sync_view(tenant: str) -> str:
        scoped = t.cast("async_scoped_session[AsyncSession]", registry[tenant])
        handed_out.append(scoped)
        scoped.add(Note(tenant=tenant))
        return "added"

    try:
        with pytest.raises(TypeError, match="async_scoped_session was used in sync code"):
            app.test_client().post("/t0")
        assert handed_out == [registry["t0"]] and registry.created == 1
        assert registry.reap() == 0
    finally:
        registry.close()
    assert (registry.disposed, len(registry)) == (1, 0)


@needs_quart
def test_engine_evicted_after_its_loop_closed_is_dropped(
    async_tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    """An engine evicted once the loop it was used on is closed is dropped with a warning.

    Each job runs in ``asyncio.run()``, a loop of its own, closed when the job ends. With
    ``NullPool`` (SQLAlchemy's advice for engines used on several loops) each connection was
    closed on its loop when the job gave it back: dropping the engine leaks nothing.
    """
    caplog.set_level(logging.WARNING, logger="async_scoped_session_ext")
    tracker = PoolTracker()
    registry = EngineRegistry(
        async_tenants.url,
        is_async=True,
        max_engines=1,
        engine_options={"poolclass": NullPool},
    )
    app = Quart(__name__)
    registry.init_app(app)

    async def job(tenant: str) -> list[str]:
        async with app.app_context():
            session = tracker.async_(registry, tenant)
            session.add(Note(tenant=tenant))
            await session.commit()
            return list(await session.scalars(select(Note.tenant)))

    closed = "The event loop of an evicted async engine is closed"
    assert asyncio.run(job("t0")) == ["t0"]
    assert asyncio.run(job("t1")) == ["t1"]  # evicts t0, whose loop is closed
    assert (registry.created, registry.disposed, registry.keys()) == (2, 1, ["t1"])
    assert caplog.text.count(closed) == 1
    registry.close()  # t1's loop is closed too
    assert (registry.disposed, len(registry)) == (2, 0)
    assert caplog.text.count(closed) == 2
    assert tracker.open_connections() == 0 and tracker.closed["t0"] == tracker.opened["t0"]
    assert None not in tracker.close_loops and len(set(tracker.close_loops)) == 2  # the jobs'


@needs_quart
async def test_failed_disposal_is_logged(
    async_tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    """A disposal that fails on the loop is logged with its error; the app serves on.

    Here an ``engine_disposed`` hook the app put on an engine fails, after the pool closed
    its connections.
    """
    caplog.set_level(logging.ERROR, logger="async_scoped_session_ext")
    tracker = PoolTracker()
    registry = EngineRegistry(async_tenants.url, is_async=True, max_engines=1)
    app = quart_app(registry, tracker)

    def report_disposal(engine: Engine) -> None:
        raise ConnectionError("the metrics service does not answer")

    failed = "Disposing an evicted engine failed."
    async with app.test_app():
        assert await apost(app, "t0") == ["t0"]
        event.listen(tracker.engines[0], "engine_disposed", report_disposal)
        assert await apost(app, "t1") == ["t1"]  # evicts the idle t0: its disposal fails
        await await_until(lambda: failed in caplog.text)
        assert await apost(app, "t0") == ["t0"]  # a new engine for t0
    assert registry.created == registry.disposed == 3
    assert tracker.open_connections() == 0  # t0's pool closed its connection all the same
    [record] = [record for record in caplog.records if record.getMessage() == failed]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert repr(record.exc_info[1]) == "ConnectionError('the metrics service does not answer')"
