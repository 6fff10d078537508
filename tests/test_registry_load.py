"""EngineRegistry under load: 50 tenants over 8 engines, through Flask and Quart (slow)."""

from __future__ import annotations

import asyncio
import random
import threading
import typing as t
from pathlib import Path

import pytest

from async_scoped_session_ext import EngineRegistry

from .support.environment import needs_quart
from .support.tenants import (
    PoolTracker,
    apost,
    closed_everything,
    flask_app,
    post,
    quart_app,
)
from .support.tenants import sqlite_tenants as _sqlite_tenants

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


@pytest.mark.slow
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


@pytest.mark.slow
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
