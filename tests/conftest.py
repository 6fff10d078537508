"""Shared fixtures: real database backends, apps, and the autouse leak detector."""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import functools
import importlib.util
import os
import sys
import typing as t
from pathlib import Path

import pytest
from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, Pool

from async_scoped_session_ext._context import ContextRegistry

from .models import Base

POSTGRES_URL = os.environ.get("ASSE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

#: Quart needs Flask >= 3.0: the compat cell for Flask 2.3 runs without it.
HAS_QUART = importlib.util.find_spec("quart") is not None
QUART_MISSING = "needs Quart, which is not installed (Quart >= 0.19 needs Flask >= 3.0)"
needs_quart = pytest.mark.skipif(not HAS_QUART, reason=QUART_MISSING)

#: The warning filters this run was given in PYTHONWARNINGS: the compat cell on Flask main
#: ignores a third-party DeprecationWarning so (see noxfile.py).
RUN_WARNINGS = [spec for spec in os.environ.get("PYTHONWARNINGS", "").split(",") if spec]

SYNC_BACKENDS = ["sqlite", "postgresql"]
ASYNC_BACKENDS = ["aiosqlite", "asyncpg"]


def _connect_admin(**kwargs: t.Any) -> t.Any:
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
        _connect_admin().close()
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
        with _connect_admin(autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')  # a crashed run's leftover
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.errors.InsufficientPrivilege:
        return base
    _created_databases.append(name)
    return base.set(database=name)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop the databases this process created."""
    for name in _created_databases:
        with _connect_admin(autocommit=True) as conn:
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


def child_environ(*warnings: str) -> dict[str, str]:
    """``os.environ`` for a child interpreter, with the filters *warnings* (``-W`` syntax)
    before this run's own (``RUN_WARNINGS``), which thus still apply in the child.

    Pass ``"error"`` here, not as ``python -W error``: ``-W`` filters take precedence over
    PYTHONWARNINGS, and Python drops a ``-W`` filter equal to a PYTHONWARNINGS one as a
    duplicate, so the run's filters cannot be repeated after it.
    """
    return {**os.environ, "PYTHONWARNINGS": ",".join([*warnings, *RUN_WARNINGS])}


#: For tests that start a new interpreter, where ``pooled_aiosqlite`` has no effect.
needs_pooled_aiosqlite = pytest.mark.skipif(
    SQLiteDialect_aiosqlite.get_pool_class(make_url("sqlite+aiosqlite:///file.db")) is NullPool,
    reason="SQLAlchemy < 2.0.38 gives aiosqlite file databases a NullPool, which closes each"
    " connection at check-in and leaves no pool to dispose",
)


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
