"""The test databases: SQLite files, and PostgreSQL from ``ASSE_POSTGRES_URL``.

Each test process works in a PostgreSQL database of its own (``<database>_asse_<pid>``),
created on first use and dropped at the end of the run.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import functools
import os
import typing as t
from pathlib import Path

import pytest
from sqlalchemy import URL, make_url
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .environment import IN_CI
from .models import Base

POSTGRES_URL = os.environ.get("ASSE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

SYNC_BACKENDS = ["sqlite", "postgresql"]
ASYNC_BACKENDS = ["aiosqlite", "asyncpg"]


def connect_admin(**kwargs: t.Any) -> t.Any:
    """A psycopg connection to the configured PostgreSQL database (for set-up and checks)."""
    import psycopg

    url = make_url(POSTGRES_URL)
    return psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        dbname=url.database or "test",
        connect_timeout=3,
        **kwargs,
    )


@functools.cache
def _postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or ``None`` when it answers."""
    import psycopg

    try:
        connect_admin().close()
    except psycopg.OperationalError as error:
        return f"PostgreSQL at {POSTGRES_URL!r} (ASSE_POSTGRES_URL) does not answer: {error}"
    return None


_created_databases: list[str] = []


@functools.cache
def _test_database_url() -> URL:
    """A database of this test process's own, so parallel runs cannot drop each other's tables.

    Falls back to the configured database when the user may not create databases.
    """
    import psycopg

    base = make_url(POSTGRES_URL)
    name = f"{base.database or 'test'}_asse_{os.getpid()}"
    try:
        with connect_admin(autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')  # a crashed run's leftover
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.errors.InsufficientPrivilege:
        return base
    _created_databases.append(name)
    return base.set(database=name)


def drop_created_databases() -> None:
    """Drop the databases this process created (at the end of the run: tests/conftest.py)."""
    for name in _created_databases:
        with connect_admin(autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require_postgres() -> None:
    """Skip (locally) or fail (with CI=true) when PostgreSQL is not reachable."""
    reason = _postgres_unavailable()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true needs PostgreSQL, but: {reason}")
        pytest.skip(reason)


def postgres_url(driver: str) -> str:
    """The test database's URL with *driver* (``psycopg`` or ``asyncpg``)."""
    return (
        _test_database_url()
        .set(drivername=f"postgresql+{driver}")
        .render_as_string(hide_password=False)
    )


def database_url(backend: str, tmp_path: Path) -> str:
    """A URL for *backend*: a file SQLite database in *tmp_path*, or PostgreSQL."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    if backend == "aiosqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    require_postgres()
    return postgres_url("psycopg" if backend == "postgresql" else "asyncpg")


@contextlib.contextmanager
def engine_on_shared_loop(url: str, **options: t.Any) -> cabc.Iterator[AsyncEngine]:
    """An async engine with fresh tables, its connections on the library's shared loop.

    Flask async views and ``run()`` use that loop; afterwards no connection may be checked
    out, and the engine is disposed there.
    """
    from async_scoped_session_ext._runner import runner

    engine = create_async_engine(url, **options)

    async def reset_tables() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)

    runner.run(reset_tables())
    try:
        yield engine
        assert engine.pool.checkedout() == 0, "a connection was left checked out"  # type: ignore[attr-defined]
    finally:
        runner.run(engine.dispose())


#: For tests that start a new interpreter, where ``pooled_aiosqlite`` has no effect.
needs_pooled_aiosqlite = pytest.mark.skipif(
    SQLiteDialect_aiosqlite.get_pool_class(make_url("sqlite+aiosqlite:///file.db")) is NullPool,
    reason="SQLAlchemy < 2.0.38 gives aiosqlite file databases a NullPool, which closes each"
    " connection at check-in and leaves no pool to dispose",
)
