"""Read replicas on a real streaming standby: reads go to the standby, writes to the primary,
a request reads its own writes; with ``max_lag``, a lagging standby is skipped.

The standby is a hot standby of the primary (``tests/support/standby.py``): every row the
primary commits reaches it. ``pg_is_in_recovery()``, read through the session, says which
server answered.
"""

from __future__ import annotations

import collections.abc as cabc
import logging
import time

import pytest

from async_scoped_session_ext._replica_health import LAG_SQL

from .support.environment import needs_quart
from .support.standby import StreamingPair
from .support.streaming_apps import (
    LOGGER,
    checked_out,
    dispose_async,
    dispose_sync,
    make_app,
    notes_table,
)

FLASK_KINDS = ["flask", "flask-async"]
#: The standby's lag as the library measures it.
LAG = str(LAG_SQL)


@pytest.fixture
def pair(streaming_pair: StreamingPair) -> cabc.Iterator[StreamingPair]:
    """The streaming pair, with a fresh notes table on both servers."""
    with notes_table(streaming_pair):
        yield streaming_pair


@pytest.mark.parametrize("kind", FLASK_KINDS)
def test_flask_reads_the_standby_and_its_own_writes(kind: str, pair: StreamingPair) -> None:
    """Flask (sync/psycopg, async/asyncpg): reads on the standby, own writes read back."""
    app = make_app(kind, pair)
    client = app.test_client()
    try:
        assert client.get("/where").json == {"standby": True}
        written = client.post("/notes?name=first").json
        assert written["read_back"] is True  # after its commit, the request reads the primary
        pair.wait_replayed()
        assert client.get(f"/notes/{written['id']}").json == {"found": True, "standby": True}
        assert checked_out(app) == 0
    finally:
        dispose_sync(app)


@needs_quart
async def test_quart_reads_the_standby_and_its_own_writes(pair: StreamingPair) -> None:
    """Quart and asyncpg: reads on the standby, own writes read back in the request."""
    app = make_app("quart", pair)
    client = app.test_client()
    try:
        assert await (await client.get("/where")).get_json() == {"standby": True}
        written = await (await client.post("/notes?name=first")).get_json()
        assert written["read_back"] is True
        pair.wait_replayed()
        read = await (await client.get(f"/notes/{written['id']}")).get_json()
        assert read == {"found": True, "standby": True}
        assert checked_out(app) == 0
    finally:
        await dispose_async(app)


def make_lag(pair: StreamingPair, client: object, write: cabc.Callable[[], object]) -> float:
    """Pause the standby's replay, write, and wait until its lag passes 1 s; the lag."""
    pair.scalar("standby", "SELECT pg_wal_replay_pause()")
    write()
    return wait_lagging(pair)


def wait_lagging(pair: StreamingPair) -> float:
    """Wait until the paused standby's lag passes 1 s; the lag."""
    deadline = time.monotonic() + 10
    while (lag := float(pair.scalar("standby", LAG) or 0)) <= 1.0:
        assert time.monotonic() < deadline, "the paused standby does not fall behind"
        time.sleep(0.1)
    return lag


@pytest.mark.parametrize("kind", FLASK_KINDS)
def test_flask_lagging_standby_is_skipped(
    kind: str, pair: StreamingPair, caplog: pytest.LogCaptureFixture
) -> None:
    """max_lag: reads go to the primary while the standby lags, and back once it caught up."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    app = make_app(kind, pair, max_lag=1.0, lag_check_interval=0)
    client = app.test_client()
    try:
        assert client.get("/where").json == {"standby": True}
        try:
            make_lag(pair, client, lambda: client.post("/notes?name=lagging"))
            assert client.get("/where").json == {"standby": False}
            assert client.get("/where").json == {"standby": False}
        finally:
            pair.scalar("standby", "SELECT pg_wal_replay_resume()")
        pair.wait_replayed()
        assert client.get("/where").json == {"standby": True}
        messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(messages) == 2, messages  # once when it lags, once when it caught up
        assert "lags" in messages[0] and "caught up" in messages[1]
    finally:
        dispose_sync(app)


@needs_quart
async def test_quart_lagging_standby_is_skipped(pair: StreamingPair) -> None:
    """Quart, max_lag: reads go to the primary while the standby lags, then back."""
    app = make_app("quart", pair, max_lag=1.0, lag_check_interval=0)
    client = app.test_client()

    async def where() -> object:
        return await (await client.get("/where")).get_json()

    try:
        assert await where() == {"standby": True}
        try:
            pair.scalar("standby", "SELECT pg_wal_replay_pause()")
            await client.post("/notes?name=lagging")
            wait_lagging(pair)
            assert await where() == {"standby": False}
        finally:
            pair.scalar("standby", "SELECT pg_wal_replay_resume()")
        pair.wait_replayed()
        assert await where() == {"standby": True}
    finally:
        await dispose_async(app)


def test_lag_is_measured_once_per_interval(pair: StreamingPair) -> None:
    """Within lag_check_interval the last measurement stands, lag or not."""
    app = make_app("flask", pair, max_lag=1.0, lag_check_interval=3600)
    client = app.test_client()
    try:
        assert client.get("/where").json == {"standby": True}  # measured: no lag
        try:
            make_lag(pair, client, lambda: client.post("/notes?name=unmeasured"))
            assert client.get("/where").json == {"standby": True}  # not measured again
        finally:
            pair.scalar("standby", "SELECT pg_wal_replay_resume()")
        pair.wait_replayed()
    finally:
        dispose_sync(app)
