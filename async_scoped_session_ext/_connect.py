"""New async connections opened in an empty context, so a pooled one pins no request.

asyncio copies the current :mod:`contextvars` context into a transport's callbacks. asyncpg
creates its socket reader while connecting, so a pooled connection keeps alive the context it
was opened in (the app context of the request that opened it, with its ``g``) for as long as
it stays in the pool, and a session kept per app context then holds its own key alive.

The mechanism: a ``do_connect`` listener (a documented SQLAlchemy event) that performs
the connect itself, in a task given a new, empty :class:`contextvars.Context`
(``create_task(context=...)``, Python 3.11+). The listener runs in SQLAlchemy's greenlet, so
it waits for that task through SQLAlchemy's greenlet bridge, ``sqlalchemy.util.await_only``
and ``greenlet_spawn``: exported by ``sqlalchemy.util`` from 2.0.10 through 2.1, used by
SQLAlchemy's own tests, but not in its documented API.

Rejected: the ``async_creator_fn`` connect argument that ``create_async_engine(async_creator=)``
uses is undocumented and absent before 2.0.16, and would need each driver's own connect
function (aiosqlite's also marks its thread as daemon); ``async_creator`` itself is documented,
but can only be given when the engine is created, and the engines here already exist.
"""

from __future__ import annotations

import asyncio
import contextvars
import typing as t

from sqlalchemy import event
from sqlalchemy.util import await_only, greenlet_spawn

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Dialect
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import ConnectionPoolEntry


def connect_outside_context(engine: AsyncEngine) -> None:
    """Open every new DBAPI connection of *engine* in an empty context; a second call is a no-op.

    Connections already in the pool keep the context they were opened in. Engines made with
    ``creator=`` or ``async_creator=`` connect without the ``do_connect`` event, so they are
    not covered. The engine is not held: SQLAlchemy's event registry refers to it weakly.
    """
    sync_engine = engine.sync_engine
    if not event.contains(sync_engine, "do_connect", _connect_in_empty_context):
        event.listen(sync_engine, "do_connect", _connect_in_empty_context)


def _connect_in_empty_context(
    dialect: Dialect,
    connection_record: ConnectionPoolEntry | None,
    cargs: list[t.Any],
    cparams: dict[str, t.Any],
) -> DBAPIConnection | None:
    # Returning a connection stops SQLAlchemy from calling the do_connect listeners added
    # after this one, so call them here first, as SQLAlchemy would: in order, in the caller's
    # context, the first connection one of them returns being used as it is.
    listeners = list(dialect.dispatch.do_connect)
    for listener in listeners[listeners.index(_connect_in_empty_context) + 1 :]:
        connection: DBAPIConnection | None = listener(dialect, connection_record, cargs, cparams)
        if connection is not None:
            return connection
    opening = _open_in_empty_context(dialect, cargs, cparams)
    try:
        return await_only(opening)
    finally:
        opening.close()  # never awaited if this was not called in SQLAlchemy's greenlet


async def _open_in_empty_context(
    dialect: Dialect, cargs: list[t.Any], cparams: dict[str, t.Any]
) -> DBAPIConnection:
    task = asyncio.get_running_loop().create_task(
        greenlet_spawn(dialect.connect, *cargs, **cparams), context=contextvars.Context()
    )
    try:
        return await task  # cancelling the caller cancels the task: asyncio passes it on
    except asyncio.CancelledError:
        if task.done() and not task.cancelled() and task.exception() is None:
            # Connected just as the caller was cancelled: nobody would ever close this.
            await greenlet_spawn(dialect.do_terminate, task.result())
        raise
