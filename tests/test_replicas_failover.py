"""Failover: the standby stops mid-load and no read fails (they go to the primary); the
outage is logged once; once the standby is back, reads return to it within the back-off.

Run on a real streaming standby (``tests/support/standby.py``), stopped with
``pg_ctl stop -m fast`` (its connections are cut) while four clients read, then started
again. Flask: threads; Quart: ``asyncio.gather``.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc as cabc
import logging
import socket
import threading
import time
import traceback
import typing as t

import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.ext.asyncio import create_async_engine

from async_scoped_session_ext.replicas import async_replica_sessionmaker, replica_sessionmaker

from .support.environment import needs_quart
from .support.standby import StreamingPair
from .support.streaming_apps import (
    LOGGER,
    Note,
    checked_out,
    dispose_async,
    dispose_sync,
    make_app,
    notes_table,
)

CLIENTS = 4
BEFORE, AFTER = 50, 150  # reads before the standby stops, and after it stopped
BACKOFF = 0.5
BACK_WITHIN = 10.0  # seconds the standby has to come back (bounds the wait, not a claim)
WHERE = select(func.pg_is_in_recovery())


@pytest.fixture
def pair(streaming_pair: StreamingPair) -> cabc.Iterator[StreamingPair]:
    """The streaming pair, with a fresh notes table; the standby runs afterwards again."""
    with notes_table(streaming_pair):
        try:
            yield streaming_pair
        finally:
            if not (streaming_pair.dirs["standby"] / "postmaster.pid").exists():
                streaming_pair.start_standby()


class Load:
    """The reads of several clients: their statuses, and where each successful one went."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: list[int] = []
        self.on_standby: list[bool] = []
        self.stopped_at: int | None = None  # how many reads were done when it stopped
        self.done = threading.Event()
        self.errors: list[str] = []  # the tracebacks of the failed reads

    def record(self, status: int, body: t.Any) -> None:
        with self.lock:
            self.statuses.append(status)
            if status == 200:
                self.on_standby.append(bool(body["standby"]))

    def enough(self, count: int) -> bool:
        with self.lock:
            return len(self.statuses) >= count

    def check(self, caplog: pytest.LogCaptureFixture) -> None:
        """No read failed, reads went to the primary once it stopped, one warning."""
        failed = [status for status in self.statuses if status != 200]
        assert failed == [], f"{len(failed)} of {len(self.statuses)} reads failed:\n" + "\n".join(
            self.errors[:2]
        )
        assert len(self.statuses) >= BEFORE + AFTER
        assert self.on_standby[:10] == [True] * 10  # before: the standby
        assert self.on_standby[-AFTER // 2 :] == [False] * (AFTER // 2)  # after: the primary
        warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "unreachable" in warnings[0].getMessage()


def back_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The INFO messages of the replicas' logger (one per outage: the replica is back)."""
    records = caplog.records
    return [r.getMessage() for r in records if r.name == LOGGER and r.levelno == logging.INFO]


def report(kind: str, load: Load, seconds: float) -> None:
    print(  # the figures docs/multiple-databases.md quotes (pytest -s)
        f"\n{kind}: {len(load.statuses)} reads, {load.statuses.count(200)} answered,"
        f" {load.on_standby.count(False)} by the primary; back on the standby"
        f" {seconds:.2f} s after it was started (backoff={BACKOFF} s)"
    )


@pytest.mark.slow
@pytest.mark.standby
@pytest.mark.parametrize("kind", ["flask", "flask-async"])
def test_flask_reads_survive_the_standby_stopping(
    kind: str, pair: StreamingPair, caplog: pytest.LogCaptureFixture
) -> None:
    """Flask: the standby stops under four reading threads; no read fails; it comes back."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    app = make_app(kind, pair, backoff=BACKOFF)
    app.config["PROPAGATE_EXCEPTIONS"] = True  # a failed read's traceback, for the report
    load = Load()

    def client_loop() -> None:
        client = app.test_client()
        while not load.done.is_set():
            try:
                response = client.get("/where")
            except Exception:
                load.errors.append(traceback.format_exc())
                load.record(500, None)
            else:
                load.record(response.status_code, response.json)

    threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: load.enough(BEFORE))
        pair.stop_standby()
        stopped = len(load.statuses)
        wait_until(lambda: load.enough(stopped + AFTER))
        load.done.set()
        for thread in threads:
            thread.join(timeout=BACK_WITHIN)
        load.check(caplog)

        client = app.test_client()
        started = time.monotonic()
        pair.start_standby()
        wait_until(lambda: client.get("/where").json == {"standby": True})
        report(kind, load, time.monotonic() - started)
        assert len(back_messages(caplog)) == 1
        assert checked_out(app) == 0
    finally:
        load.done.set()
        dispose_sync(app)


@pytest.mark.slow
@pytest.mark.standby
@needs_quart
async def test_quart_reads_survive_the_standby_stopping(
    pair: StreamingPair, caplog: pytest.LogCaptureFixture
) -> None:
    """Quart: the standby stops under four reading tasks; no read fails; it comes back."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    app = make_app("quart", pair, backoff=BACKOFF)
    client = app.test_client()
    load = Load()

    async def client_loop() -> None:
        while not load.done.is_set():
            response = await client.get("/where")
            load.record(response.status_code, await response.get_json())

    async def stop_midway() -> None:
        await async_wait_until(lambda: load.enough(BEFORE))
        await asyncio.to_thread(pair.stop_standby)
        stopped = len(load.statuses)
        await async_wait_until(lambda: load.enough(stopped + AFTER))
        load.done.set()

    try:
        await asyncio.wait_for(
            asyncio.gather(stop_midway(), *(client_loop() for _ in range(CLIENTS))),
            timeout=60,
        )
        load.check(caplog)

        async def on_standby() -> bool:
            response = await client.get("/where")
            return bool((await response.get_json())["standby"])

        started = time.monotonic()
        await asyncio.to_thread(pair.start_standby)
        deadline = time.monotonic() + BACK_WITHIN
        while not await on_standby():
            assert time.monotonic() < deadline, "reads did not return to the standby"
            await asyncio.sleep(0.02)
        report("quart", load, time.monotonic() - started)
        assert len(back_messages(caplog)) == 1
        assert checked_out(app) == 0
    finally:
        load.done.set()
        await dispose_async(app)


def wait_until(condition: cabc.Callable[[], bool]) -> None:
    """Wait (at most BACK_WITHIN seconds) until *condition* holds."""
    deadline = time.monotonic() + BACK_WITHIN
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.01)


async def async_wait_until(condition: cabc.Callable[[], bool]) -> None:
    """Wait (at most BACK_WITHIN seconds) until *condition* holds, letting tasks run."""
    deadline = time.monotonic() + BACK_WITHIN
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.01)


def test_a_read_cut_mid_transaction_retries_on_the_primary(pair: StreamingPair) -> None:
    """psycopg: a read on a standby connection cut mid-transaction runs again on the primary."""
    primary = create_engine(pair.url("primary"))
    standby = create_engine(pair.url("standby"))
    try:
        with replica_sessionmaker(primary, standby, backoff=BACKOFF)() as session:
            assert session.scalar(WHERE) is True
            pair.stop_standby()
            assert session.scalar(WHERE) is False  # the same statement, on the primary
            session.add(Note(name="after the cut"))
            session.commit()  # the cut connection's transaction does not stop the commit
            assert session.scalar(select(Note.name)) == "after the cut"
    finally:
        pair.start_standby()
        primary.dispose()
        standby.dispose()


async def test_async_read_cut_mid_transaction_retries_on_the_primary(pair: StreamingPair) -> None:
    """asyncpg: a read on a standby connection cut mid-transaction runs again on the primary."""
    primary = create_async_engine(pair.url("primary", "asyncpg"))
    standby = create_async_engine(pair.url("standby", "asyncpg"))
    try:
        async with async_replica_sessionmaker(primary, standby, backoff=BACKOFF)() as session:
            assert await session.scalar(WHERE) is True
            await asyncio.to_thread(pair.stop_standby)
            assert await session.scalar(WHERE) is False
            assert (await session.execute(WHERE)).scalar() is False  # stays on the primary
            session.add(Note(name="after the cut"))
            await session.commit()
    finally:
        await asyncio.to_thread(pair.start_standby)
        await primary.dispose()
        await standby.dispose()


def test_reads_spread_over_the_healthy_replicas(
    pair: StreamingPair, caplog: pytest.LogCaptureFixture
) -> None:
    """Several replicas: an unreachable one is skipped (logged once), the others share reads."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    primary = create_engine(pair.url("primary"))
    dead = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{unused_port()}/postgres")
    standbys = [create_engine(pair.url("standby")) for _ in range(2)]
    factory = replica_sessionmaker(primary, [dead, *standbys], backoff=60)
    used: collections.Counter[str] = collections.Counter()
    try:
        for _ in range(100):
            with factory() as session:
                assert session.scalar(WHERE) is True
                used[str(standbys.index(t.cast(Engine, session.get_bind(clause=WHERE))))] += 1
        assert sorted(used) == ["0", "1"], used  # both standby engines answered reads
        warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(warnings) == 1 and "unreachable" in warnings[0], warnings
    finally:
        for engine in (primary, dead, *standbys):
            engine.dispose()


def unused_port() -> int:
    """A port of 127.0.0.1 nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_replica_that_does_not_answer_times_out_to_the_primary(
    pair: StreamingPair, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg: a replica that accepts but never answers times out; the read gets the primary."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    with socket.socket() as silent:  # connections queue in its backlog, never answered
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        primary = create_async_engine(pair.url("primary", "asyncpg"))
        replica = create_async_engine(
            f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres",
            connect_args={"timeout": 0.5},
        )
        factory = async_replica_sessionmaker(primary, replica, backoff=60)
        try:
            for _ in range(3):  # the first times out, the others skip it (back-off)
                async with factory() as session:
                    assert await session.scalar(WHERE) is False
            messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
            assert len(messages) == 1 and "TimeoutError" in messages[0], messages
        finally:
            await primary.dispose()
            await replica.dispose()
