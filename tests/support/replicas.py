"""Databases for the read-replica tests: a primary, its stand-in replica, and another database.

Two PostgreSQL databases (or SQLite files) stand in for a primary and its replica. They are
not replicated, so where a read went shows: the replica holds a row the primary never had,
and rows written through the session exist on the primary only. For ``binds``, a third
database holds a table that all three have, each with its own row. The fixtures here
(``replica_database``, ``other_database``, ``sync_urls``, ``async_urls``) are imported by the
test modules that use them.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
from pathlib import Path

import pytest
from sqlalchemy import String, create_engine, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .databases import postgres_url, require_postgres
from .extra_databases import database_url, postgres_databases


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
