"""Read replicas: what goes where, Flask and Quart views reading from the replica, the end of a
session's writes (close, reset, invalidate), and the factories' types.

Two PostgreSQL databases stand in for a primary and its replica (``tests/support/replicas.py``).
They are not replicated, so where a read went shows: the replica holds a row the primary
never had, and rows written through the session exist on the primary only.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t
from pathlib import Path

import pytest
from flask import Flask, request
from sqlalchemy import Engine, create_engine, delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session
from async_scoped_session_ext.replicas import (
    ReplicaSession,
    async_replica_sessionmaker,
    replica_sessionmaker,
)

from .support import replicas
from .support.databases import postgres_url
from .support.environment import HAS_QUART, needs_quart
from .support.extra_databases import database_url
from .support.replicas import Item, ReplicaBase

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart
    from quart import request as quart_request


replica_database = replicas.replica_database
other_database = replicas.other_database
sync_urls = replicas.sync_urls
async_urls = replicas.async_urls


@pytest.fixture
def urls(replica_database: str) -> cabc.Iterator[dict[str, str]]:
    """Primary and replica psycopg URLs; both have the table, only the replica has a row."""
    urls = {
        "primary": postgres_url("psycopg"),
        "replica": database_url(replica_database, "psycopg"),
    }
    engines = {role: create_engine(url) for role, url in urls.items()}
    for engine in engines.values():
        ReplicaBase.metadata.drop_all(engine)
        ReplicaBase.metadata.create_all(engine)
    with engines["replica"].begin() as conn:
        conn.execute(insert(Item).values(name="on the replica"))
    try:
        yield urls
    finally:
        for engine in engines.values():
            ReplicaBase.metadata.drop_all(engine)
            engine.dispose()


def names_in(url: str) -> list[str]:
    """The item names in the database at *url*, read directly."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(conn.scalars(select(Item.name)))
    finally:
        engine.dispose()


def test_routing(tmp_path: Path) -> None:
    """What goes where: plain SELECTs to the replica, the rest to the primary, writes stick."""
    primary = create_engine(f"sqlite:///{tmp_path / 'primary.db'}")
    replica = create_engine(f"sqlite:///{tmp_path / 'replica.db'}")
    session = replica_sessionmaker(primary, replica)()
    plain = select(Item)
    try:
        assert session.get_bind(Item, clause=plain) is replica
        assert session.get_bind(clause=plain.union(select(Item))) is replica
        forced = plain.execution_options(use_primary=True)
        assert session.get_bind(Item, clause=forced) is primary
        assert not session.wrote  # a forced read does not make the session stick
        assert session.get_bind(Item, clause=plain) is replica
        assert session.get_bind(Item, clause=plain.with_for_update()) is primary
        assert session.wrote  # a locking read does: it is usually followed by a write
        assert session.get_bind(Item, clause=plain) is primary
        session.close()

        session.info["use_primary"] = True
        assert session.get_bind(Item, clause=plain) is primary
        del session.info["use_primary"]

        for write in (insert(Item), update(Item), delete(Item), text("SELECT 1")):
            session.close()
            assert session.get_bind(Item, clause=write) is primary
            assert session.wrote
            assert session.get_bind(Item, clause=plain) is primary  # reads its writes
        session.close()
        assert session.get_bind(Item, clause=plain) is replica
        assert session.get_bind() is primary  # connection(): the primary
    finally:
        session.close()
        primary.dispose()
        replica.dispose()


def test_flask_views_read_from_the_replica(urls: dict[str, str]) -> None:
    """Flask: reads see the replica, writes land on the primary, a forced read sees them."""
    primary, replica = create_engine(urls["primary"]), create_engine(urls["replica"])
    app = Flask(__name__)
    scoped = flask_scoped_session(replica_sessionmaker(primary, replica), app)

    @app.get("/items")
    def read() -> list[str]:
        statement = select(Item.name).order_by(Item.name)
        if request.args.get("primary"):
            statement = statement.execution_options(use_primary=True)
        return list(current_session.scalars(statement))

    @app.post("/items")
    def write() -> list[str]:
        item = Item(name=request.args["name"])
        current_session.add(item)
        current_session.commit()
        # the session wrote: reading (and refreshing the expired item) stays on the primary
        return [item.name, *current_session.scalars(select(Item.name))]

    @app.get("/items/session-primary")
    def read_primary() -> list[str]:
        current_session.info["use_primary"] = True
        return list(current_session.scalars(select(Item.name)))

    client = app.test_client()
    try:
        assert client.get("/items").json == ["on the replica"]
        assert client.get("/items?primary=1").json == []
        assert client.post("/items?name=written").json == ["written", "written"]
        assert client.get("/items").json == ["on the replica"]  # a new session: replica
        assert client.get("/items?primary=1").json == ["written"]
        assert client.get("/items/session-primary").json == ["written"]
        assert names_in(urls["primary"]) == ["written"]
        assert names_in(urls["replica"]) == ["on the replica"]
        with app.app_context():
            assert isinstance(scoped(), ReplicaSession)
    finally:
        for engine in (primary, replica):
            assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            engine.dispose()


@needs_quart
async def test_quart_views_read_from_the_replica(urls: dict[str, str]) -> None:
    """Quart and asyncpg: the same routing through AsyncSession's wrapped ReplicaSession."""
    primary = create_async_engine(urls["primary"].replace("+psycopg", "+asyncpg"))
    replica = create_async_engine(urls["replica"].replace("+psycopg", "+asyncpg"))
    app = Quart(__name__)
    scoped = async_scoped_session(async_replica_sessionmaker(primary, replica), app)

    @app.get("/items")
    async def read() -> list[str]:
        statement = select(Item.name).order_by(Item.name)
        if quart_request.args.get("primary"):
            statement = statement.execution_options(use_primary=True)
        return list(await current_session.scalars(statement))

    @app.post("/items")
    async def write() -> list[str]:
        item = Item(name=quart_request.args["name"])
        current_session.add(item)
        await current_session.flush()  # in the transaction that flushed, reads: primary
        names = list(await current_session.scalars(select(Item.name)))
        await current_session.commit()
        return names

    @app.get("/bind")
    async def bind() -> dict[str, t.Any]:
        session = scoped()
        sync_session = t.cast(ReplicaSession, session.sync_session)
        return {
            "replica": sync_session.get_bind(clause=select(Item)) is replica.sync_engine,
            "primary": sync_session.get_bind() is primary.sync_engine,
        }

    client = app.test_client()
    try:
        assert await (await client.get("/items")).get_json() == ["on the replica"]
        assert await (await client.post("/items?name=written")).get_json() == ["written"]
        assert await (await client.get("/items")).get_json() == ["on the replica"]
        assert await (await client.get("/items?primary=1")).get_json() == ["written"]
        assert await (await client.get("/bind")).get_json() == {"replica": True, "primary": True}
        assert names_in(urls["primary"]) == ["written"]
        assert names_in(urls["replica"]) == ["on the replica"]
    finally:
        for engine in (primary, replica):
            assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            await engine.dispose()


# -- the end of a session's life: close(), reset(), invalidate() ----------------------------

#: Session.reset() and AsyncSession.reset() are new in SQLAlchemy 2.0.22.
ENDS = [end for end in ("reset", "invalidate", "close") if hasattr(Session, end)]


def test_reset_and_invalidate_read_from_the_replica_again(sync_urls: dict[str, str]) -> None:
    """After a write, reset() and invalidate(), like close(), send plain reads to the replica."""
    primary, replica = create_engine(sync_urls["primary"]), create_engine(sync_urls["replica"])
    plain = select(Item.name).order_by(Item.name)
    try:
        with replica_sessionmaker(primary, replica)() as session:
            for end in ENDS:
                session.add(Item(name=f"before {end}"))
                session.commit()
                assert "on the replica" not in session.scalars(plain).all()  # the primary
                getattr(session, end)()
                assert session.scalars(plain).all() == ["on the replica"], end
        assert names_in(sync_urls["primary"]) == sorted(f"before {end}" for end in ENDS)
    finally:
        for engine in (primary, replica):
            assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            engine.dispose()


async def test_async_reset_and_invalidate_read_from_the_replica_again(
    async_urls: dict[str, str],
) -> None:
    """Async: after a write, AsyncSession.reset() and invalidate() read from the replica again."""
    primary = create_async_engine(async_urls["primary"])
    replica = create_async_engine(async_urls["replica"])
    plain = select(Item.name).order_by(Item.name)
    try:
        async with async_replica_sessionmaker(primary, replica)() as session:
            for end in ENDS:
                session.add(Item(name=f"before {end}"))
                await session.commit()
                assert "on the replica" not in (await session.scalars(plain)).all()
                await getattr(session, end)()
                assert (await session.scalars(plain)).all() == ["on the replica"], end
    finally:
        for engine in (primary, replica):
            assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            await engine.dispose()


def test_types_line_up(tmp_path: Path) -> None:
    """The factories are what the scoped sessions take: their checks accept them."""
    primary = create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    replica: Engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    async_primary: AsyncEngine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    async_replica = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    sync_scoped: flask_scoped_session[Session] = flask_scoped_session(
        replica_sessionmaker(primary, replica)
    )
    async_scoped = async_scoped_session(async_replica_sessionmaker(async_primary, async_replica))
    assert issubclass(sync_scoped.session_factory.class_, ReplicaSession)
    assert async_scoped.session_factory.kw["sync_session_class"] is ReplicaSession
    for engine in (primary, replica, async_primary.sync_engine, async_replica.sync_engine):
        engine.dispose()
