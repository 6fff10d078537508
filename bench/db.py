"""The benchmark's databases: a SQLite file in a temp dir and a table of its own in PostgreSQL."""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import os
import tempfile
import typing as t
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, make_url, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import Select

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
ITEM_ID = 1
ITEM_NAME = "item-1"


def make_table(name: str) -> Table:
    """The benchmark table: ``id`` and ``name``, one row per test item."""
    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(50), nullable=False),
    )


@dataclass(frozen=True)
class Databases:
    """Where the benchmark's table lives; ``pg_skipped`` says why PostgreSQL is not used."""

    table: Table
    sqlite_path: Path
    pg_url: str | None  # plain postgresql:// form (driver chosen per variant)
    pg_skipped: str
    pg_version: str

    @property
    def query(self) -> Select[t.Any]:
        """The one small query every database variant runs: the item's name by primary key."""
        return select(self.table.c.name).where(self.table.c.id == ITEM_ID)

    def sqlite(self, driver: str = "pysqlite") -> str:
        return f"sqlite+{driver}:///{self.sqlite_path}"

    def postgresql(self, driver: str) -> str:
        if self.pg_url is None:
            raise RuntimeError(f"PostgreSQL is not used: {self.pg_skipped}")
        url = make_url(self.pg_url).set(drivername=f"postgresql+{driver}")
        return url.render_as_string(hide_password=False)


def postgres_url() -> str:
    return os.environ.get("ASSE_POSTGRES_URL", DEFAULT_URL)


def shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _fill(url: str, table: Table, connect_args: dict[str, object]) -> str:
    """Create *table* with its one row; return the server version string."""
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.begin() as connection:
            table.drop(connection, checkfirst=True)
            table.create(connection)
            connection.execute(table.insert(), [{"id": ITEM_ID, "name": ITEM_NAME}])
            sql = "select sqlite_version()" if url.startswith("sqlite") else "select version()"
            version = str(connection.exec_driver_sql(sql).scalar_one())
        return version
    finally:
        engine.dispose()


def _drop(url: str, table: Table) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            table.drop(connection, checkfirst=True)
    finally:
        engine.dispose()


@contextlib.contextmanager
def databases(use_postgres: bool = True) -> cabc.Iterator[Databases]:
    """Create the table in a temp SQLite file and, if it answers, in PostgreSQL; drop both after."""
    table = make_table(f"bench_item_{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="asse-bench-") as tmp:
        sqlite_path = Path(tmp) / "bench.db"
        _fill(f"sqlite:///{sqlite_path}", table, {})
        pg_url: str | None = None
        skipped, version = "", ""
        if not use_postgres:
            skipped = "PostgreSQL variants were turned off (--no-postgres)"
        else:
            url = make_url(postgres_url()).set(drivername="postgresql+psycopg")
            try:
                version = _fill(
                    url.render_as_string(hide_password=False), table, {"connect_timeout": 5}
                )
                pg_url = postgres_url()
            except (OSError, SQLAlchemyError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                skipped = f"PostgreSQL at {shown(postgres_url())} does not answer: {first_line}"
        try:
            yield Databases(table, sqlite_path, pg_url, skipped, version)
        finally:
            if pg_url is not None:
                url = make_url(pg_url).set(drivername="postgresql+psycopg")
                _drop(url.render_as_string(hide_password=False), table)
