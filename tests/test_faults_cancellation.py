"""Faults in the close path: ``remove()`` cancelled at every loop iteration, a stalled close.

The sweep cancels a request's ``remove()`` after k = 0, 1, 2, … event-loop iterations, once
or on every iteration; the session must leave the registry and its transaction, and the
connection go back to the pool. The stalled close (the fault proxy stops all traffic) must
give way after ``close_timeout``, invalidate the connection, and still let the response
through. The harness is ``tests/support/faultapp.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from async_scoped_session_ext import async_scoped_session

from .support.environment import QUART_MISSING
from .support.faultproxy import FaultProxy

pytest.importorskip("quart", reason=QUART_MISSING)

from quart import Quart

from .support import faultapp as harness
from .support.faultapp import (
    TEST_BOUND,
    TIMEOUT,
    Leftovers,
    assert_next_request_succeeds,
    assert_no_garbage_collected_connections,
    build_app,
    client,
    engine_through,
    library_records,
    serving,
    settle,
)

pytestmark = pytest.mark.postgres

# The harness's fixtures (server_log is autouse).
proxy = harness.proxy
application_name = harness.application_name
admin = harness.admin
server_log = harness.server_log


# --- c. cancellation at every loop iteration of the close path -----------------------------

MAX_ITERATIONS = 500


@dataclass
class SweepStep:
    """One step of the sweep: how a request whose ``remove()`` was cancelled ended."""

    task: asyncio.Task[None]
    session: AsyncSession
    cancelled: bool  # whether a cancel() landed before remove() finished
    finished_first: bool  # whether remove() finished before the k-th iteration


async def cancel_remove_after(
    app: Quart, scoped: async_scoped_session[AsyncSession], k: int, cancels: str
) -> SweepStep:
    """Run a request-like task that queries then removes; cancel it *k* iterations in."""
    reached = asyncio.Event()
    removed = asyncio.Event()
    sessions: list[AsyncSession] = []

    async def request() -> None:
        async with app.app_context():
            session = scoped()
            sessions.append(session)
            await session.execute(text("select 1"))
            assert session.in_transaction()
            reached.set()  # no await between this and remove(): k counts from its start
            await scoped.remove()
            removed.set()

    task = asyncio.create_task(request())
    async with asyncio.timeout(TIMEOUT):
        await reached.wait()
    for _ in range(k):
        await asyncio.sleep(0)
    finished_first = removed.is_set()
    cancelled = False
    if not finished_first:
        cancelled = task.cancel()
        assert cancelled, f"k={k}: the task ended without finishing remove()"
        async with asyncio.timeout(TIMEOUT):
            while cancels == "every_iteration" and not task.done():
                task.cancel()
                await asyncio.sleep(0)
    async with asyncio.timeout(TIMEOUT):
        await asyncio.wait({task})
    return SweepStep(task, sessions[0], cancelled, finished_first)


@pytest.mark.parametrize("cancels", ["once", "every_iteration"])
async def test_cancellation_sweep_over_remove(
    proxy: FaultProxy, application_name: str, cancels: str
) -> None:
    """Cancel ``remove()`` after k = 0, 1, 2, … loop iterations, until it finishes first.

    For every k: the session left the registry and its transaction, the connection went
    back to the pool (never discarded: the proxy sees one connection throughout), and a
    cancellation that landed is re-raised. ``every_iteration`` cancels again on every
    iteration until the task ends, as repeated hang-ups would.
    """
    app = Quart(__name__)
    landed = 0
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=1) as engine,
    ):
        scoped = async_scoped_session(async_sessionmaker(engine), app)
        for k in range(MAX_ITERATIONS + 1):
            step = await cancel_remove_after(app, scoped, k, cancels)

            assert step.task.cancelled() == step.cancelled, f"k={k}: cancellation swallowed"
            if not step.cancelled:
                step.task.result()
            assert len(scoped.registry) == 0, f"k={k}: the session is still registered"
            assert not step.session.in_transaction(), f"k={k}: the session was not closed"
            assert engine.pool.checkedout() == 0, f"k={k}: the connection is checked out"  # type: ignore[attr-defined]
            assert proxy.accepted == 1, f"k={k}: the connection was discarded, not returned"
            landed += step.cancelled
            if step.finished_first:
                break
        else:
            pytest.fail(f"remove() did not finish within {MAX_ITERATIONS} loop iterations")
    print(f"FACT c ({cancels}): {landed} cancellations landed (k=0..{k - 1}), done first at k={k}")


# --- d. a stalled close is bounded by close_timeout ----------------------------------------

STALL_CLOSE_TIMEOUT = 0.5


async def test_stalled_close_is_bounded_and_the_connection_invalidated(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """A close that cannot finish gives way after close_timeout; the response still comes.

    When the timeout cancels the close, SQLAlchemy first tries asyncpg's graceful close,
    which would wait up to 2 s on a stalled network; the library cancels it a second time
    after a short grace, which makes SQLAlchemy force-close the connection at once.
    """
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=2) as engine,
    ):
        fa = build_app(engine, proxy, close_timeout=STALL_CLOSE_TIMEOUT)
        async with serving(fa), client(fa) as http:
            started, started_wall = time.monotonic(), time.time()
            response = await http.get("/then-stall")
            took = time.monotonic() - started

            assert response.status_code == 200
            assert fa.armed.is_set(), "the view did not stall the proxy"
            assert STALL_CLOSE_TIMEOUT <= took < STALL_CLOSE_TIMEOUT + 1.0, f"took {took:.2f} s"
            assert fa.checkedout() == 0
            assert len(fa.scoped.registry) == 0
            (warning,) = library_records(server_log)
            assert warning.levelno == logging.WARNING
            assert "invalidated" in warning.getMessage(), warning.getMessage()
            warned_after = warning.created - started_wall

            proxy.resume()
            await assert_next_request_succeeds(fa)
            left = await settle(fa, admin, application_name)
            assert left == Leftovers(0, 0, ()), left
            assert_no_garbage_collected_connections(server_log)
        print(
            f"FACT d: close_timeout={STALL_CLOSE_TIMEOUT}, stalled: warning logged after"
            f" {warned_after:.2f} s, response after {took:.2f} s"
        )
