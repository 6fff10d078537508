"""The sticky primary: after a committing request, the same client's next read sees the new
row every time, while another client, reading meanwhile, keeps reading the standby.

On a real streaming standby (``tests/support/standby.py``). One client commits a note and
reads it back in its next request, ``ITERATIONS`` times; another client reads at the same
time (Flask: threads; Quart: ``asyncio.gather``). Without ``StickyPrimary`` the next read
goes to the standby, which may not have replayed the commit yet: those misses are measured
and printed (``pytest -s``), not asserted, as they depend on the machine's timing.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import threading
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, func, select

from async_scoped_session_ext import current_session, flask_scoped_session
from async_scoped_session_ext.replicas import StickyPrimary, replica_sessionmaker

from .support.environment import HAS_QUART, needs_quart
from .support.standby import StreamingPair
from .support.streaming_apps import (
    Note,
    StreamBase,
    checked_out,
    dispose_async,
    dispose_sync,
    make_app,
    notes_table,
)

if HAS_QUART:
    from quart import Quart

ITERATIONS = 300


@pytest.fixture
def pair(streaming_pair: StreamingPair) -> cabc.Iterator[StreamingPair]:
    """The streaming pair, with a fresh notes table."""
    with notes_table(streaming_pair):
        yield streaming_pair


class Tally:
    """What the writing client read back, and where the other client's reads went."""

    def __init__(self) -> None:
        self.misses = 0  # the writer's next read did not find its note
        self.writer_on_standby = 0
        self.other_reads: list[bool] = []  # the other client's: True on the standby
        self.done = threading.Event()

    def after_write(self, read: t.Any) -> None:
        self.misses += not read["found"]
        self.writer_on_standby += bool(read["standby"])


def flask_run(kind: str, pair: StreamingPair, *, sticky: bool) -> Tally:
    """One writer and one reader on a Flask app (threads); the tally."""
    app = make_app(kind, pair, sticky=sticky)
    tally = Tally()

    def other() -> None:
        client = app.test_client()
        while not tally.done.is_set():
            tally.other_reads.append(client.get("/where").json["standby"])

    reader = threading.Thread(target=other)
    reader.start()
    try:
        writer = app.test_client()
        for number in range(ITERATIONS):
            note_id = writer.post(f"/notes?name=n{number}").json["id"]
            tally.after_write(writer.get(f"/notes/{note_id}").json)
    finally:
        tally.done.set()
        reader.join(timeout=30)
        assert checked_out(app) == 0
        dispose_sync(app)
    return tally


def check(kind: str, sticky: Tally, plain: Tally) -> None:
    print(  # the figures docs/multiple-databases.md quotes (pytest -s)
        f"\n{kind}: next read missed the new row {plain.misses} of {ITERATIONS} times"
        f" without StickyPrimary, {sticky.misses} of {ITERATIONS} with it; the other client"
        f" read {len(sticky.other_reads)} times meanwhile, {sticky.other_reads.count(True)}"
        " on the standby"
    )
    assert sticky.misses == 0
    assert sticky.writer_on_standby == 0  # pinned: its reads went to the primary
    assert plain.writer_on_standby > 0  # not pinned: they went to the standby
    assert sticky.other_reads and all(sticky.other_reads)  # the other client: standby


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flask", "flask-async"])
def test_flask_sticky_primary(kind: str, pair: StreamingPair) -> None:
    """Flask: 0 misses after a commit for the writer; the other client reads the standby."""
    check(kind, flask_run(kind, pair, sticky=True), flask_run(kind, pair, sticky=False))


async def quart_run(pair: StreamingPair, *, sticky: bool) -> Tally:
    """One writer and one reader on a Quart app (``asyncio.gather``); the tally."""
    app = make_app("quart", pair, sticky=sticky)
    tally = Tally()

    async def other() -> None:
        client = app.test_client()
        while not tally.done.is_set():
            response = await client.get("/where")
            tally.other_reads.append((await response.get_json())["standby"])

    async def write() -> None:
        client = app.test_client()
        try:
            for number in range(ITERATIONS):
                response = await client.post(f"/notes?name=n{number}")
                note_id = (await response.get_json())["id"]
                tally.after_write(await (await client.get(f"/notes/{note_id}")).get_json())
        finally:
            tally.done.set()

    try:
        await asyncio.wait_for(asyncio.gather(write(), other()), timeout=60)
        assert checked_out(app) == 0
    finally:
        await dispose_async(app)
    return tally


@pytest.mark.slow
@needs_quart
async def test_quart_sticky_primary(pair: StreamingPair) -> None:
    """Quart: 0 misses after a commit for the writer; the other client reads the standby."""
    check("quart", await quart_run(pair, sticky=True), await quart_run(pair, sticky=False))


def test_only_a_cookie_the_app_signed_pins(pair: StreamingPair) -> None:
    """The cookie is set after a commit only; a tampered one, or another key's, pins nobody."""
    app = make_app("flask", pair, sticky=True)
    sticky: StickyPrimary = app.extensions["test_sticky"]
    client = app.test_client()
    try:
        assert "Set-Cookie" not in client.get("/where").headers  # no commit: no cookie
        response = client.post("/notes?name=pinned")
        cookie = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
        assert sticky.pinned(app, cookie)
        assert client.get(f"/notes/{response.json['id']}").json["standby"] is False
        assert not sticky.pinned(app, cookie[:-2] + "xx")
        app.secret_key = "another key"
        assert not sticky.pinned(app, cookie)
        app.secret_key = None
        with pytest.raises(RuntimeError, match="SECRET_KEY"):
            sticky.pinned(app, cookie)
    finally:
        dispose_sync(app)


def test_committed_write_counts_only_committed_writes(tmp_path: Path) -> None:
    """committed_write: set by a commit after a write; not by reads, nor a rolled-back write."""
    primary = create_engine(f"sqlite:///{tmp_path / 'primary.db'}")
    replica = create_engine(f"sqlite:///{tmp_path / 'replica.db'}")
    for engine in (primary, replica):
        StreamBase.metadata.create_all(engine)
    try:
        with replica_sessionmaker(primary, replica)() as session:
            session.scalars(select(Note)).all()
            session.commit()
            assert not session.committed_write  # a read-only commit
            session.add(Note(name="rolled back"))
            session.flush()
            session.rollback()
            session.commit()
            assert not session.committed_write  # the write was rolled back
            session.add(Note(name="kept"))
            session.commit()
            assert session.committed_write
    finally:
        primary.dispose()
        replica.dispose()


def sync_where() -> dict[str, t.Any]:
    """A sync view: whether the read went to the standby."""
    return {"standby": current_session.scalar(select(func.pg_is_in_recovery()))}


def test_a_commit_by_commit_on_success_sets_the_cookie(pair: StreamingPair) -> None:
    """commit_on_success=True commits after the view: the cookie is still set, and pins."""
    primary = create_engine(pair.url("primary"))
    standby = create_engine(pair.url("standby"))
    app = Flask(__name__)
    app.secret_key = "streaming tests"
    scoped = flask_scoped_session(
        replica_sessionmaker(primary, standby), app, commit_on_success=True
    )
    StickyPrimary(scoped, app, seconds=5)

    @app.post("/notes")
    def write() -> str:
        current_session.add(Note(name="committed after the view"))
        return "added"

    app.add_url_rule("/where", view_func=sync_where)

    client = app.test_client()
    try:
        assert "Set-Cookie" not in client.get("/where").headers
        assert "asse_primary=" in client.post("/notes").headers["Set-Cookie"]
        assert client.get("/where").json == {"standby": False}  # pinned to the primary
        assert app.test_client().get("/where").json == {"standby": True}  # another client
    finally:
        primary.dispose()
        standby.dispose()


@needs_quart
async def test_quart_with_a_sync_session_pins_too(pair: StreamingPair) -> None:
    """Quart with flask_scoped_session: the cookie pins; the session is marked in a thread."""
    primary = create_engine(pair.url("primary"))
    standby = create_engine(pair.url("standby"))
    app = Quart(__name__)
    app.secret_key = "streaming tests"
    StickyPrimary(flask_scoped_session(replica_sessionmaker(primary, standby), app), app)

    @app.post("/notes")
    def write() -> str:
        current_session.add(Note(name="from a sync view"))
        current_session.commit()
        return "added"

    app.add_url_rule("/where", view_func=sync_where)

    client = app.test_client()
    try:
        assert await (await client.get("/where")).get_json() == {"standby": True}
        assert "asse_primary=" in (await client.post("/notes")).headers["Set-Cookie"]
        assert await (await client.get("/where")).get_json() == {"standby": False}
    finally:
        primary.dispose()
        standby.dispose()
