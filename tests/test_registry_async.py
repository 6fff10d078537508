"""EngineRegistry, async: disposal on the loop the engine was used on (Quart's, Flask's shared
loop), reaping from another thread, and never waiting for a loop from under the lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from sqlalchemy import select

from async_scoped_session_ext import EngineRegistry
from async_scoped_session_ext._runner import runner

from .support import tenants
from .support.environment import needs_quart
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
