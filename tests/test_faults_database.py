"""Faults from the database: cut connections, a cut during the close, an outage and recovery.

The fault proxy (``tests/support/faultapp.py``) cuts the connections while requests are in
flight and while they sit in the pool, cuts the teardown's rollback, and refuses new
connections while the database is "down". Requests must answer 500 at once with the cause
logged, a failed close must be logged and the view's response still sent, and the app must
recover without a restart, with and without ``pool_pre_ping``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

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


# --- e. cut connections give clean 500s ----------------------------------------------------

IN_FLIGHT = 4


def failure_kind(record: logging.LogRecord) -> str:
    """The kind of error a record was logged with: ``disconnect`` or ``connect``.

    ``disconnect``: a SQLAlchemy ``DBAPIError`` that invalidated its connection (a pooled
    or in-use connection was found dead). ``connect``: the ``ConnectionError`` asyncpg
    raises when a new connection is reset (``Connect call failed`` or ``Connection reset by
    peer``, depending on when the reset arrives); SQLAlchemy passes it through unwrapped.
    """
    assert record.exc_info is not None and record.exc_info[1] is not None
    error = record.exc_info[1]
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return "disconnect"
    if isinstance(error, ConnectionError):
        return "connect"
    raise AssertionError(f"unexpected cause: {error!r}")


def cause(record: logging.LogRecord) -> str:
    """The driver's message of a logged ``DBAPIError``."""
    assert record.exc_info is not None and isinstance(record.exc_info[1], DBAPIError)
    return f"{type(record.exc_info[1]).__name__}: {record.exc_info[1].orig}"


async def test_cut_connections_give_500s_with_the_cause_logged(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """Cut in flight: every request answers 500 at once; cut between: one 500, then 200."""
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=IN_FLIGHT) as engine,
        serving(build_app(engine, proxy)) as fa,
        client(fa) as http,
    ):
        # In flight: every request is inside pg_sleep when the proxy cuts.
        requests = [asyncio.ensure_future(http.get("/sleep/2000")) for _ in range(IN_FLIGHT)]
        async with asyncio.timeout(TIMEOUT):
            while (
                sum(s == "active" for _, s in await backends(admin, application_name)) < IN_FLIGHT
            ):
                await asyncio.sleep(0.02)
        cut_at = time.monotonic()
        assert proxy.cut() == IN_FLIGHT
        responses = await asyncio.gather(*requests)
        answered_after = time.monotonic() - cut_at
        assert [r.status_code for r in responses] == [500] * IN_FLIGHT
        assert answered_after < 1.0, f"the 500s took {answered_after:.2f} s"
        errors = app_errors(server_log, fa)
        assert [failure_kind(r) for r in errors] == ["disconnect"] * IN_FLIGHT
        causes = {cause(r) for r in errors}
        assert library_records(server_log) == [], "the teardown failed to close"
        assert fa.checkedout() == 0 and len(fa.scoped.registry) == 0

        # Between requests: the pooled connections are dead. The first request that checks
        # one out fails; SQLAlchemy then invalidates the whole pool, so the others reconnect.
        warm = await asyncio.gather(*(http.get("/sleep/100") for _ in range(IN_FLIGHT)))
        assert [r.status_code for r in warm] == [200] * IN_FLIGHT
        server_log.clear()
        assert proxy.cut() == IN_FLIGHT
        statuses = [(await http.get("/pid")).status_code for _ in range(IN_FLIGHT + 1)]
        assert statuses == [500] + [200] * IN_FLIGHT
        (error,) = app_errors(server_log, fa)
        assert failure_kind(error) == "disconnect"
        idle_cause = cause(error)

        left = await settle(fa, admin, application_name)
        settled_after = time.monotonic() - cut_at
        assert left == Leftovers(0, 0, ()), left
        assert_no_garbage_collected_connections(server_log)
        assert library_records(server_log) == []
        print(
            f"FACT e: backends idle {settled_after:.2f} s after the in-flight cut;"
            f" cut in flight -> {IN_FLIGHT}x500 after {answered_after:.3f} s,"
            f" causes {sorted(causes)}; cut while pooled -> {statuses}, cause {idle_cause!r}"
        )


async def test_cut_during_the_close_is_logged_and_the_response_still_sent(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """A cut while the teardown's rollback is in flight: the close fails, is logged, and the
    response (sent after the teardown) is still the view's 200; the connection is discarded.
    """
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=1) as engine,
        serving(build_app(engine, proxy)) as fa,
        client(fa) as http,
    ):
        pending = asyncio.ensure_future(http.get("/then-delay"))
        async with asyncio.timeout(TIMEOUT):
            await fa.armed.wait()
        await asyncio.sleep(CLOSE_DELAY / 2)  # the rollback's reply is on its way
        assert proxy.cut() == 1
        response = await pending
        proxy.delay(0)

        assert response.status_code == 200
        assert app_errors(server_log, fa) == []
        (failure,) = library_records(server_log)
        assert failure.levelno == logging.ERROR
        assert "failed" in failure.getMessage(), failure.getMessage()
        assert failure_kind(failure) == "disconnect"
        left = await settle(fa, admin, application_name)
        assert left == Leftovers(0, 0, ()), left
        assert_no_garbage_collected_connections(server_log)
        accepted = proxy.accepted
        await assert_next_request_succeeds(fa)
        assert proxy.accepted == accepted + 1, "the cut connection was not replaced"
        print(f"FACT e2: cut during close -> {response.status_code}, logged {cause(failure)!r}")


# --- f. the database goes down and comes back ----------------------------------------------

RECOVERY_POOL = 3


@pytest.mark.parametrize("requests_while_down", [3, 0], ids=["requests-while-down", "quiet"])
@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre_ping", "no_pre_ping"])
async def test_recovery_after_the_database_comes_back(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
    pre_ping: bool,
    requests_while_down: int,
) -> None:
    """Down (refuse + cut): requests get 500s; back up: the app recovers without a restart.

    The pool is full (three connections) when the database goes down. Without pre-ping, a
    request after the outage may still check out a dead connection: SQLAlchemy then
    invalidates the whole pool, so only that one request fails.
    """
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(
            proxy, application_name, pool_size=RECOVERY_POOL, pre_ping=pre_ping
        ) as engine,
        serving(build_app(engine, proxy)) as fa,
        client(fa) as http,
    ):
        warm = await asyncio.gather(*(http.get("/sleep/200") for _ in range(RECOVERY_POOL)))
        assert [r.status_code for r in warm] == [200] * RECOVERY_POOL
        assert fa.checkedin() == RECOVERY_POOL and proxy.open == RECOVERY_POOL

        proxy.refuse(True)
        assert proxy.cut() == RECOVERY_POOL
        down = [(await http.get("/pid")).status_code for _ in range(requests_while_down)]
        assert down == [500] * requests_while_down
        # With pre-ping the dead connection is replaced before use, and connecting fails;
        # without, the first request uses it and fails, which invalidates the whole pool.
        down_kinds = [failure_kind(r) for r in app_errors(server_log, fa)]
        if requests_while_down:
            first = "connect" if pre_ping else "disconnect"
            assert down_kinds == [first] + ["connect"] * (requests_while_down - 1)
        assert fa.checkedout() == 0 and len(fa.scoped.registry) == 0

        proxy.refuse(False)
        server_log.clear()
        after = [(await http.get("/pid")).status_code for _ in range(RECOVERY_POOL + 1)]
        failed = after.count(500)
        assert set(after) <= {200, 500}
        assert after[failed:] == [200] * (len(after) - failed), "a failure after a success"
        expected_failures = 1 if not pre_ping and requests_while_down == 0 else 0
        assert failed == expected_failures, after
        assert [failure_kind(r) for r in app_errors(server_log, fa)] == ["disconnect"] * failed

        left = await settle(fa, admin, application_name)
        assert left == Leftovers(0, 0, ()), left
        assert_no_garbage_collected_connections(server_log)
        assert library_records(server_log) == []
        print(
            f"FACT f (pre_ping={pre_ping}, requests while down={requests_while_down}):"
            f" down {down} ({down_kinds}), after recovery {after}; refused {proxy.refused}"
        )
