"""Read replicas: two PostgreSQL databases stand in for a primary and its replica.

They are not replicated, so where a read went shows: the replica holds a row the primary
never had, and rows written through the session exist on the primary only. For ``binds``,
a third database (or three SQLite files) holds a table that all three have, each with its
own row.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import typing as t
from pathlib import Path

import pytest
from flask import Flask, request
from sqlalchemy import (
    Engine,
    String,
    create_engine,
    delete,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session
from async_scoped_session_ext.replicas import (
    ReplicaSession,
    async_replica_sessionmaker,
    replica_sessionmaker,
)

from .support.databases import postgres_url, require_postgres
from .support.environment import HAS_QUART, needs_quart
from .support.extra_databases import database_url, postgres_databases

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart
    from quart import request as quart_request


class ReplicaBase(DeclarativeBase):
    pass


class Item(ReplicaBase):
    __tablename__ = "asse_test_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class OtherBase(DeclarativeBase):
    """Models that a session's ``binds`` put on a third database, neither primary nor replica."""


class Other(OtherBase):
    __tablename__ = "asse_test_other"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture(scope="module")
def replica_database() -> cabc.Iterator[str]:
    """The name of a second database beside the test database."""
    with postgres_databases("replica") as names:
        yield names["replica"]


@pytest.fixture(scope="module")
def other_database() -> cabc.Iterator[str]:
    """The name of a third database, for the models bound elsewhere."""
    with postgres_databases("other") as names:
        yield names["other"]


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


# -- binds: only the primary's statements are routed ---------------------------------------

ROLES = ("primary", "replica", "other")
#: What each database holds before a test; a read's rows say which database answered.
OTHER_ROWS = {
    "primary": "other: on the primary",
    "replica": "other: on the replica",
    "other": "other: on its own database",
}


@contextlib.contextmanager
def partitioned_databases(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> cabc.Iterator[dict[str, str]]:
    """Primary, replica and other URLs for *backend*, filled in as their names say.

    The primary and the replica both have both tables; the other database has only
    ``asse_test_other``. Only the replica has an item; each ``asse_test_other`` has its own row.
    """
    if backend in ("sqlite", "aiosqlite"):
        scheme = "sqlite+aiosqlite" if backend == "aiosqlite" else "sqlite"
        urls = {role: f"{scheme}:///{tmp_path / f'{role}.db'}" for role in ROLES}
    else:
        require_postgres()
        driver = "asyncpg" if backend == "asyncpg" else "psycopg"
        urls = {
            "primary": postgres_url(driver),
            "replica": database_url(request.getfixturevalue("replica_database"), driver),
            "other": database_url(request.getfixturevalue("other_database"), driver),
        }
    engines = {
        role: create_engine(url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg"))
        for role, url in urls.items()
    }
    metadatas = {
        "primary": [ReplicaBase.metadata, OtherBase.metadata],
        "replica": [ReplicaBase.metadata, OtherBase.metadata],
        "other": [OtherBase.metadata],
    }
    try:
        for role, engine in engines.items():
            for metadata in metadatas[role]:
                metadata.drop_all(engine)
                metadata.create_all(engine)
            with engine.begin() as conn:
                conn.execute(insert(Other).values(name=OTHER_ROWS[role]))
                if role == "replica":
                    conn.execute(insert(Item).values(name="on the replica"))
        yield urls
    finally:
        for role, engine in engines.items():
            for metadata in metadatas[role]:
                metadata.drop_all(engine)
            engine.dispose()


@pytest.fixture
def sync_urls(
    sync_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> cabc.Iterator[dict[str, str]]:
    """Sync URLs (pysqlite files or psycopg) of a primary, its replica and another database."""
    with partitioned_databases(sync_backend, tmp_path, request) as urls:
        yield urls


@pytest.fixture
def async_urls(
    async_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> cabc.Iterator[dict[str, str]]:
    """Async URLs (aiosqlite files or asyncpg) of a primary, its replica and another database."""
    with partitioned_databases(async_backend, tmp_path, request) as urls:
        yield urls


def other_names(url: str) -> list[str]:
    """The names in ``asse_test_other`` at *url* (a sync URL), read directly."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(conn.scalars(select(Other.name)))
    finally:
        engine.dispose()


#: The ways ``binds`` can name the other database's models; SQLAlchemy resolves each.
BIND_KEYS: dict[str, t.Callable[[], object]] = {
    "base class": lambda: OtherBase,
    "mapped class": lambda: Other,
    "mapper": lambda: inspect(Other),
    "table": lambda: Other.__table__,
}


@pytest.mark.parametrize("bind_key", sorted(BIND_KEYS))
def test_reads_of_a_model_bound_elsewhere_come_from_its_database(
    sync_urls: dict[str, str], bind_key: str
) -> None:
    """With binds, a read of a model bound to another database returns that database's rows."""
    engines = {role: create_engine(url) for role, url in sync_urls.items()}
    factory = replica_sessionmaker(
        engines["primary"], engines["replica"], binds={BIND_KEYS[bind_key](): engines["other"]}
    )
    try:
        with factory() as session:
            own_rows = [OTHER_ROWS["other"]]
            assert session.scalars(select(Other.name)).all() == own_rows
            assert session.scalars(select(Other)).one().name == OTHER_ROWS["other"]
            if bind_key != "base class":  # a Core read names only the table
                assert session.scalars(select(Other.__table__.c.name)).all() == own_rows
            assert session.scalars(select(Item.name)).all() == ["on the replica"]
            assert session.get_bind(Other, clause=select(Other)) is engines["other"]

            session.add(Other(name="added"))
            session.commit()  # a write to the other database, not to the primary
            assert not session.wrote
            assert session.scalars(select(Item.name)).all() == ["on the replica"]

            session.add(Item(name="written"))
            session.commit()  # a write to the primary: its reads stay there
            assert session.scalars(select(Item.name)).all() == ["written"]
            assert session.scalars(select(Other.name).order_by(Other.name)).all() == [
                "added",
                OTHER_ROWS["other"],
            ]
        assert other_names(sync_urls["other"]) == ["added", OTHER_ROWS["other"]]
        assert other_names(sync_urls["replica"]) == [OTHER_ROWS["replica"]]
        assert other_names(sync_urls["primary"]) == [OTHER_ROWS["primary"]]
    finally:
        for engine in engines.values():
            assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            engine.dispose()


def test_binds_may_name_the_primary_too(sync_urls: dict[str, str]) -> None:
    """Binds naming the primary and another database: the primary's models read from the replica."""
    engines = {role: create_engine(url) for role, url in sync_urls.items()}
    binds = {ReplicaBase: engines["primary"], OtherBase: engines["other"]}
    factory = sessionmaker(
        engines["primary"], class_=ReplicaSession, binds=binds, replica=engines["replica"]
    )
    try:
        with factory() as session:
            assert session.scalars(select(Item.name)).all() == ["on the replica"]
            assert session.scalars(select(Other.name)).all() == [OTHER_ROWS["other"]]
            session.add(Item(name="written"))
            session.flush()
            assert session.scalars(select(Item.name)).all() == ["written"]
            session.rollback()
    finally:
        for engine in engines.values():
            engine.dispose()


def test_binds_without_bind_are_refused(tmp_path: Path) -> None:
    """Binds without a bind: the session says to bind it to the primary, not guess."""
    primary = create_engine(f"sqlite:///{tmp_path / 'primary.db'}")
    replica = create_engine(f"sqlite:///{tmp_path / 'replica.db'}")
    factory = sessionmaker(class_=ReplicaSession, binds={ReplicaBase: primary}, replica=replica)
    try:
        with pytest.raises(TypeError, match=r"has no 'bind'.*Bind it to that database"):
            factory()
    finally:
        primary.dispose()
        replica.dispose()


@pytest.mark.parametrize("form", ["replica_sessionmaker", "async_sessionmaker"])
async def test_async_reads_of_a_model_bound_elsewhere_come_from_its_database(
    async_urls: dict[str, str], form: str
) -> None:
    """Async: a read of a model bound to another database returns that database's rows."""
    engines = {role: create_async_engine(url) for role, url in async_urls.items()}
    factory: async_sessionmaker[t.Any]
    if form == "replica_sessionmaker":
        factory = async_replica_sessionmaker(
            engines["primary"], engines["replica"], binds={OtherBase: engines["other"]}
        )
    else:
        factory = async_sessionmaker(
            engines["primary"],
            binds={ReplicaBase: engines["primary"], OtherBase: engines["other"]},
            sync_session_class=ReplicaSession,
            replica=engines["replica"].sync_engine,
        )
    try:
        async with factory() as session:
            assert (await session.scalars(select(Other.name))).all() == [OTHER_ROWS["other"]]
            assert (await session.scalars(select(Item.name))).all() == ["on the replica"]
            session.add(Other(name="added"))
            await session.commit()
            assert (await session.scalars(select(Item.name))).all() == ["on the replica"]
            session.add(Item(name="written"))
            await session.commit()
            assert (await session.scalars(select(Item.name))).all() == ["written"]
        sync_url = async_urls["other"].replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
        assert other_names(sync_url) == ["added", OTHER_ROWS["other"]]
    finally:
        for engine in engines.values():
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
