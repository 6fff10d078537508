"""The engines an app made from its config: listing, counting, disposing, fresh tables."""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import typing as t

from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from async_scoped_session_ext._app import get_state
from async_scoped_session_ext._runner import runner

from .models import Base

if t.TYPE_CHECKING:
    from flask.sansio.app import App  # new in Flask 3.0

AppT = t.TypeVar("AppT", bound="App")


def engines_of(app: App) -> list[Engine | AsyncEngine]:
    """The engines the library made from this app's config so far."""
    state = get_state(app)
    return [] if state is None else state.engines.created()


def checked_out(engine: Engine | AsyncEngine) -> int:
    """Connections checked out of a queue pool (a memory database's pool has no count)."""
    pool = engine.pool
    return pool.checkedout() if isinstance(pool, QueuePool) else 0


@contextlib.contextmanager
def disposing(app: AppT) -> cabc.Iterator[AppT]:
    """Dispose the engines *app* made on this thread or the shared loop, afterwards."""
    try:
        yield app
    finally:
        for engine in engines_of(app):
            assert checked_out(engine) == 0, "a connection was left checked out"
            if isinstance(engine, AsyncEngine):
                runner.run(engine.dispose())
            else:
                engine.dispose()


def sync_url_of(url: str) -> str:
    """The sync-driver URL of the same database, to set the tables up."""
    return url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")


@contextlib.contextmanager
def fresh_tables(url: str) -> cabc.Iterator[str]:
    """Create the test tables in the database at *url* (sync or async driver), then drop them."""
    engine = create_engine(sync_url_of(url))
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        yield url
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()
