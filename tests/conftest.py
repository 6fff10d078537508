"""Fixtures: real database backends, and the autouse leak detector.

Helpers that are not fixtures live in ``tests/support/``.
"""

from __future__ import annotations

import collections.abc as cabc
import sys
import typing as t
from pathlib import Path

import pytest
from sqlalchemy import URL, Engine, create_engine
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, Pool

from async_scoped_session_ext._context import ContextRegistry

from .support.databases import ASYNC_BACKENDS, SYNC_BACKENDS, database_url, drop_created_databases
from .support.models import Base
from .support.standby import streaming_pair  # noqa: F401 - session-scoped: one pair per run


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop the PostgreSQL databases this process created."""
    drop_created_databases()


@pytest.fixture(autouse=True, scope="session")
def pooled_aiosqlite() -> cabc.Iterator[None]:
    """Pool aiosqlite file databases on SQLAlchemy < 2.0.38 too, as later versions do.

    The tests count pooled connections (``pool.checkedout()``, the pool's close events);
    before 2.0.38 SQLAlchemy gave these databases a ``NullPool``, which has no
    ``checkedout()`` and closes every connection at check-in.
    """
    default = SQLiteDialect_aiosqlite.get_pool_class

    def get_pool_class(cls: type[SQLiteDialect_aiosqlite], url: URL) -> type[Pool]:
        pool_class: type[Pool] = default(url)
        return AsyncAdaptedQueuePool if pool_class is NullPool else pool_class

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SQLiteDialect_aiosqlite, "get_pool_class", classmethod(get_pool_class))
        yield


@pytest.fixture(params=SYNC_BACKENDS)
def sync_backend(request: pytest.FixtureRequest) -> str:
    """A sync backend: pysqlite or PostgreSQL through psycopg."""
    return t.cast(str, request.param)


@pytest.fixture(params=ASYNC_BACKENDS)
def async_backend(request: pytest.FixtureRequest) -> str:
    """An async backend: aiosqlite or PostgreSQL through asyncpg."""
    return t.cast(str, request.param)


@pytest.fixture
def sync_engine(sync_backend: str, tmp_path: Path) -> cabc.Iterator[Engine]:
    """An engine with fresh tables; afterwards no connection may be checked out."""
    # A stuck test fails instead of hanging when drop_all waits on its locks.
    connect_args = {"options": "-c lock_timeout=10s"} if sync_backend == "postgresql" else {}
    engine = create_engine(database_url(sync_backend, tmp_path), connect_args=connect_args)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        yield engine
        assert engine.pool.checkedout() == 0, "a connection was left checked out"  # type: ignore[attr-defined]
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


@pytest.fixture
async def async_engine(async_backend: str, tmp_path: Path) -> cabc.AsyncIterator[AsyncEngine]:
    """An async engine with fresh tables, on the test's own event loop."""
    connect_args: dict[str, t.Any] = {}
    if async_backend == "asyncpg":  # a stuck test fails instead of hanging in drop_all
        connect_args = {"server_settings": {"lock_timeout": "10s"}}
    engine = create_async_engine(database_url(async_backend, tmp_path), connect_args=connect_args)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield engine
        assert engine.pool.checkedout() == 0, "a connection was left checked out"  # type: ignore[attr-defined]
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await engine.dispose()


def _pushed_contexts() -> list[object]:
    pushed = []
    for name in ("flask.globals", "quart.globals"):
        module = sys.modules.get(name)
        if module is not None and module._cv_app.get(None) is not None:
            pushed.append(module._cv_app.get())
    return pushed


@pytest.fixture(autouse=True)
def leak_detector(monkeypatch: pytest.MonkeyPatch) -> cabc.Iterator[None]:
    """Fail a test that leaves an app context pushed or a session registered."""
    registries: list[ContextRegistry[t.Any]] = []
    original_init = ContextRegistry.__init__

    def tracking_init(self: ContextRegistry[t.Any], *args: t.Any, **kwargs: t.Any) -> None:
        original_init(self, *args, **kwargs)
        registries.append(self)

    monkeypatch.setattr(ContextRegistry, "__init__", tracking_init)
    yield
    assert _pushed_contexts() == [], "the test left an app context pushed"
    left = [len(registry) for registry in registries if len(registry)]
    assert left == [], "the test left sessions registered (a teardown did not run)"
