"""Flask async views on asyncpg: the shared loop against a NullPool session per request.

Both apps have one async view, ``GET /item``, that selects the item's name and the
PostgreSQL backend pid of the connection it used, and returns ``"<name> <pid>"``:

* ``ours``: ``async_scoped_session(async_sessionmaker(create_async_engine(url)), app)`` with
  SQLAlchemy's default pool; the view awaits ``current_session.execute(...)``. The library runs
  the app's async code on its one shared event loop, so pooled connections are reused.
* ``nullpool``: the usual workaround without this library. Plain Flask (asgiref) runs each
  async view on a new event loop, so the engine uses ``poolclass=NullPool`` and the view opens
  ``async with AsyncSession(engine)``: a new PostgreSQL connection per request.

The pids each variant saw are counted: ours stays within its pool, nullpool uses one
backend per request.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import typing as t

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool, QueuePool

from async_scoped_session_ext import async_scoped_session, current_session

from .db import ITEM_ID, ITEM_NAME, Databases
from .measure import NULLPOOL, OURS, BenchError, Check

PATH = "/item"


class AsyncFlaskApp(t.NamedTuple):
    app: Flask
    engine: AsyncEngine
    close: cabc.Callable[[], None]  # disposes the engine on the loop that owns its pool


def _statement(dbs: Databases) -> t.Any:
    table = dbs.table
    return select(table.c.name, func.pg_backend_pid()).where(table.c.id == ITEM_ID)


def ours_app(dbs: Databases, url: str) -> AsyncFlaskApp:
    """The library's way: a pooled engine, the session scoped to the app context."""
    app = Flask("bench_flask_async_ours")
    engine = create_async_engine(url)
    asession = async_scoped_session(async_sessionmaker(engine), app)
    statement = _statement(dbs)

    @app.get(PATH)
    async def item() -> str:
        name, pid = (await current_session.execute(statement)).one()
        return f"{name} {pid}"

    return AsyncFlaskApp(app, engine, lambda: asession.run(engine.dispose()))


def nullpool_app(dbs: Databases, url: str) -> AsyncFlaskApp:
    """The usual workaround: asgiref's loop per view, NullPool, a session opened in the view."""
    app = Flask("bench_flask_async_nullpool")
    engine = create_async_engine(url, poolclass=NullPool)
    statement = _statement(dbs)

    @app.get(PATH)
    async def item() -> str:
        async with AsyncSession(engine) as session:
            name, pid = (await session.execute(statement)).one()
            return f"{name} {pid}"

    # NullPool keeps no connection, so no loop owns anything: any loop may dispose it.
    return AsyncFlaskApp(app, engine, lambda: asyncio.run(engine.dispose()))


BUILDERS: dict[str, cabc.Callable[[Databases, str], AsyncFlaskApp]] = {
    OURS: ours_app,
    NULLPOOL: nullpool_app,
}


def pid_check(pids: set[int]) -> Check:
    """A check that the body is ``"<item name> <pid>"``; the pid is added to *pids*."""

    def check(body: bytes) -> None:
        name, _, pid = body.decode(errors="replace").partition(" ")
        if name != ITEM_NAME or not pid.isdigit():
            raise BenchError(f"expected '{ITEM_NAME} <pid>', got {body[:300]!r}")
        pids.add(int(pid))

    return check


def pool_limit(engine: AsyncEngine) -> int | None:
    """``pool_size + max_overflow`` of a QueuePool engine (None for NullPool or no limit)."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return None
    overflow: int = pool._max_overflow
    return None if overflow < 0 else pool.size() + overflow


def checked_out(engine: AsyncEngine) -> int:
    """Connections still checked out of the engine's pool (0 once every session closed)."""
    pool = engine.pool
    return pool.checkedout() if isinstance(pool, QueuePool) else 0
