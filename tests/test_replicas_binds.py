"""Read replicas with ``binds``: only the primary's statements are routed.

A model bound to another database is read from and written to that database, and its writes
do not count; ``binds`` may name the primary too; and ``binds`` without a ``bind`` (the
primary) are refused, whether given to the factory, added to the session later or given with
a statement. Sync (pysqlite, psycopg) and async (aiosqlite, asyncpg); a third database (or a
third SQLite file) holds a table that all three have, each with its own row
(``tests/support/replicas.py``).
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext.replicas import (
    ReplicaSession,
    async_replica_sessionmaker,
    replica_sessionmaker,
)

from .support import replicas
from .support.replicas import OTHER_ROWS, Item, Other, OtherBase, ReplicaBase

replica_database = replicas.replica_database
other_database = replicas.other_database
sync_urls = replicas.sync_urls
async_urls = replicas.async_urls


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


@pytest.mark.parametrize("how", ["bind_mapper", "bind_table", "bind_arguments"])
def test_binds_given_after_the_session_was_made_are_refused(tmp_path: Path, how: str) -> None:
    """Without a bind, binds added to the session later, or a statement's own bind, are refused.

    The session still cannot tell which database the replica replicates; it says so before
    any statement runs.
    """
    primary = create_engine(f"sqlite:///{tmp_path / 'primary.db'}")
    replica = create_engine(f"sqlite:///{tmp_path / 'replica.db'}")
    bind_arguments: dict[str, t.Any] = {}
    try:
        with sessionmaker(class_=ReplicaSession, replica=replica)() as session:
            if how == "bind_mapper":
                session.bind_mapper(Item, primary)
            elif how == "bind_table":
                session.bind_table(Item.__table__, primary)  # type: ignore[arg-type]
            else:
                bind_arguments["bind"] = primary
            with pytest.raises(TypeError, match=r"has no 'bind'.*Bind it to that database"):
                session.scalars(select(Item.name), bind_arguments=bind_arguments)
            assert not session.wrote
        assert primary.pool.checkedout() == replica.pool.checkedout() == 0  # type: ignore[attr-defined]
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
