"""EngineRegistry under concurrency: concurrent first requests for a key make one engine, and
any interleaving of tenant requests over threads or tasks sees only its tenant's rows.
"""

from __future__ import annotations

import asyncio
import threading
import typing as t
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_scoped_session_ext import EngineRegistry

from .support import tenants
from .support.environment import needs_quart
from .support.tenants import (
    TENANTS,
    PoolTracker,
    Tenants,
    apost,
    closed_everything,
    flask_app,
    quart_app,
)

pg_tenants = tenants.pg_tenants
sync_tenants = tenants.sync_tenants
async_tenants = tenants.async_tenants


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
