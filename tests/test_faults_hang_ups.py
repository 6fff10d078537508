"""Faults from the client: hang-ups mid-query, while connecting, during a slow close.

A Quart app served by hypercorn on loopback reaches PostgreSQL through a fault proxy
(``tests/support/faultapp.py``). Clients hang up while a view waits on ``pg_sleep``, while
the pool is still opening the request's connection, and while the teardown's close waits on
a slow rollback. Afterwards nothing may be left behind: no connection checked out, no
session registered, no backend of the test running or idle in a transaction, no connection
left to the garbage collector, and the next request must succeed.
"""

from __future__ import annotations

import asyncio
import time
import typing as t

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from async_scoped_session_ext._close import close_to_completion

from .support.environment import QUART_MISSING
from .support.faultproxy import FaultProxy

pytest.importorskip("quart", reason=QUART_MISSING)

from .support import faultapp as harness
from .support.faultapp import (
    CLOSE_DELAY,
    TEST_BOUND,
    TIMEOUT,
    Leftovers,
    app_errors,
    assert_next_request_succeeds,
    assert_no_garbage_collected_connections,
    backends,
    build_app,
    engine_through,
    hang_up,
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


# --- a. the client hangs up mid-query ------------------------------------------------------

SEQUENTIAL_HANG_UPS = 10
CONCURRENT_HANG_UPS = 10


@pytest.mark.slow  # 20 hang-ups, 10 of them in a row: about 2.5 s
async def test_hang_up_mid_query_leaves_nothing_behind(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """20 clients hang up 0.2 s into ``pg_sleep(2)``: every view is cancelled, nothing leaks."""
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=CONCURRENT_HANG_UPS) as engine,
        serving(build_app(engine, proxy)) as fa,
    ):
        for _ in range(SEQUENTIAL_HANG_UPS):
            assert await hang_up(fa, "/sleep/2000", after=0.2) == b""
        started = time.monotonic()
        got = await asyncio.gather(
            *(hang_up(fa, "/sleep/2000", after=0.2) for _ in range(CONCURRENT_HANG_UPS))
        )
        assert got == [b""] * CONCURRENT_HANG_UPS

        left = await settle(fa, admin, application_name)
        settled_after = time.monotonic() - started
        assert left == Leftovers(0, 0, ()), left
        assert fa.cancelled_views == SEQUENTIAL_HANG_UPS + CONCURRENT_HANG_UPS
        assert_no_garbage_collected_connections(server_log)
        assert library_records(server_log) == []
        assert app_errors(server_log, fa) == []
        accepted = proxy.accepted
        await assert_next_request_succeeds(fa)
        print(
            f"FACT a: {fa.cancelled_views} views cancelled mid-query; clean"
            f" {settled_after:.2f} s after the concurrent hang-ups; proxy accepted"
            f" {accepted} connections for {fa.cancelled_views} hang-ups"
            f" (+{proxy.accepted - accepted} for the next request)"
        )


CONNECT_DELAY = 0.2  # seconds each server reply is delayed: connecting takes about 0.42 s


async def test_hang_up_while_connecting_leaves_nothing_behind(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """Hang-ups that land while the pool is still opening the request's connection."""
    hang_ups = (0.05, 0.15, 0.25, 0.3)  # during the handshake's two delayed round trips
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=1) as engine,
        serving(build_app(engine, proxy)) as fa,
    ):
        connected: list[object] = []

        @event.listens_for(engine.sync_engine, "connect")
        def on_connect(dbapi_connection: object, record: object) -> None:
            connected.append(dbapi_connection)

        await assert_next_request_succeeds(fa)  # the dialect is initialised
        connected.clear()
        for after in hang_ups:
            await engine.dispose()  # an empty pool: the request has to connect
            proxy.delay(CONNECT_DELAY, "to_client")
            assert await hang_up(fa, "/sleep/2000", after=after) == b""
            left = await settle(fa, admin, application_name)
            proxy.delay(0)
            assert left == Leftovers(0, 0, ()), (after, left)
        assert fa.cancelled_views == len(hang_ups)
        assert connected == [], "a hang-up landed after the connection was made"
        assert_no_garbage_collected_connections(server_log)
        assert library_records(server_log) == []
        await assert_next_request_succeeds(fa)


# --- b. the client hangs up while the teardown is closing the session ----------------------


async def test_hang_up_during_a_slow_close_still_returns_the_connection(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The close outlives the hang-up: the connection goes back to the pool and is reused."""
    closes: list[tuple[str, float]] = []  # (how the close ended, how long it took)

    async def recording_close(*args: t.Any, **kwargs: t.Any) -> None:
        started = time.monotonic()
        try:
            await close_to_completion(*args, **kwargs)
        except asyncio.CancelledError:
            closes.append(("cancelled", time.monotonic() - started))
            raise
        closes.append(("closed", time.monotonic() - started))

    # remove() calls the close it imported; record how each close ends.
    monkeypatch.setattr("async_scoped_session_ext._async.close_to_completion", recording_close)

    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=1) as engine,
        serving(build_app(engine, proxy)) as fa,
    ):
        outcomes = []
        for _ in range(3):
            fa.armed.clear()
            closes.clear()
            got = await hang_up(fa, "/then-delay", after=0.1, armed=fa.armed)
            assert got == b"", "the response came before the hang-up"
            async with asyncio.timeout(TIMEOUT):
                while not closes:
                    await asyncio.sleep(0.01)
            proxy.delay(0)

            how, took = closes[0]
            outcomes.append(f"{how} after {took:.2f} s")
            assert how == "cancelled", f"the hang-up did not land during the close: {closes}"
            assert took >= CLOSE_DELAY * 0.8, "the close did not wait for the slow rollback"
            left = await settle(fa, admin, application_name)
            assert left == Leftovers(0, 0, ()), left
            assert fa.checkedin() == 1, "the connection did not go back to the pool"
            view_pid = fa.pids[-1]
            assert await backends(admin, application_name) == [(view_pid, "idle")]
            accepted = proxy.accepted
            assert await assert_next_request_succeeds(fa) == view_pid, "not reused"
            assert proxy.accepted == accepted, "the next request opened a new connection"

        assert proxy.accepted == 1, "a connection was discarded"
        assert_no_garbage_collected_connections(server_log)
        assert library_records(server_log) == []
        print(f"FACT b: closes under a hang-up: {outcomes}")
