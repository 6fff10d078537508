"""The stressed server: a Quart app on hypercorn, in a subprocess of its own.

The subprocess (``python -m stress --serve ...``) serves the app built by :func:`build_app`
on a listening socket the parent binds on 127.0.0.1 and hands over, so that its memory is
measured on its own. Its ``/work`` view inserts a row into a table of its own through
``current_session``, flushes, reads the row back and, depending on the query, raises an
injected fault (a 500), runs ``pg_sleep`` and commits or not; ``/stats`` reports the registry
size, the pool's checked-out connections and the process's RSS.

Everything here runs in the subprocess; :mod:`stress.process` is the parent's side of it.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import gc
import logging
import signal
import sys
import typing as t
import warnings
from dataclasses import dataclass
from types import TracebackType

from quart import Quart, g, has_app_context, request
from sqlalchemy import BigInteger, Table, insert, select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import QueuePool

from async_scoped_session_ext import async_scoped_session, current_session

from .plan import HOST

SERVER_KEEP_ALIVE = 5.0  # hypercorn's keep-alive timeout (see run.CLIENT_KEEP_ALIVE)


# --- the app (in the subprocess) ------------------------------------------------------------


class StressBase(DeclarativeBase):
    """The declarative base of the run's table."""


class StressRow(StressBase):
    """One row per request; concrete subclasses name the table (see :func:`row_model`)."""

    __abstract__ = True

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    req: Mapped[int]
    committed: Mapped[bool]  # whether the view meant to commit it
    payload: Mapped[str]


def row_model(table: str) -> type[StressRow]:
    """A mapped class for *table* (a name of this run's own)."""
    return t.cast(
        "type[StressRow]", type(f"StressRow_{table}", (StressRow,), {"__tablename__": table})
    )


def rss_kb() -> int | None:
    """This process's resident set size in kB (``VmRSS``), or ``None`` if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def malloc_trim() -> bool:
    """Hand the C heap's free memory back to the OS (glibc only); whether that was possible.

    RSS also counts memory that glibc keeps after Python freed it; trimming it tells heap
    fragmentation apart from objects that are still alive.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


class StressQuart(Quart):
    """A Quart app that counts its unhandled exceptions and logs only the unintended ones."""

    counters: collections.Counter[str]

    def log_exception(
        self,
        exception_info: tuple[type, BaseException, TracebackType] | tuple[None, None, None],
    ) -> None:
        """Count an injected fault's 500 without a traceback; log any other exception."""
        if has_app_context() and g.get("injected_fault", False):
            self.counters["injected_500"] += 1  # intended: no traceback on stderr
            return
        self.counters["unexpected_exception"] += 1
        super().log_exception(exception_info)


class InjectedFault(Exception):
    """The view's own exception type, one of the injected faults."""


async def inject(fault: str, row_table: Table, row_id: int, n: int) -> t.NoReturn:
    """Raise the *fault* the request asked for; the session has flushed a row already."""
    g.injected_fault = True  # see StressQuart.log_exception
    if fault == "sql":  # the transaction is left aborted
        await current_session.execute(text("select 1 / 0"))
    elif fault == "integrity":  # a unique violation: aborted too
        await current_session.execute(
            insert(row_table).values(id=row_id, req=n, committed=False, payload="duplicate")
        )
    elif fault == "value":
        raise ValueError(f"injected fault in request {n}")
    elif fault == "lookup":
        raise KeyError(f"injected fault in request {n}")
    elif fault == "runtime":
        raise RuntimeError(f"injected fault in request {n}")
    raise InjectedFault(f"injected fault {fault!r} in request {n}")


@dataclass
class Server:
    """The stressed app and what it is built on."""

    app: StressQuart
    engine: AsyncEngine
    scoped: async_scoped_session[AsyncSession]
    table: Table


def build_app(
    url: str, application_name: str, table_name: str, pool_size: int, max_overflow: int
) -> Server:
    """The stressed app: ``/work`` uses ``current_session``; ``/stats`` reports on it."""
    app = StressQuart("asse_stress")
    app.counters = collections.Counter()
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=30,
        connect_args={"server_settings": {"application_name": application_name}},
    )
    scoped = async_scoped_session(async_sessionmaker(engine), app)
    row_cls = row_model(table_name)
    table = StressBase.metadata.tables[table_name]
    counters = app.counters

    @app.before_serving
    async def create_table() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(table.create)

    @app.after_serving
    async def drop_table() -> None:
        try:
            async with engine.begin() as conn:
                await conn.execute(text("set local lock_timeout = '5s'"))
                await conn.run_sync(table.drop, checkfirst=True)
        finally:
            await engine.dispose()

    @app.get("/work")
    async def work() -> dict[str, object]:
        n = request.args.get("n", default=0, type=int)
        sleep = request.args.get("sleep", default=0.0, type=float)
        commit = request.args.get("commit") == "1"
        fault = request.args.get("fault", "")
        counters["started"] += 1
        try:
            session = current_session()
            row = row_cls(req=n, committed=commit, payload=f"request {n}")
            current_session.add(row)
            await current_session.flush()
            row_id = row.id
            if fault:
                await inject(fault, table, row_id, n)
            if sleep > 0:
                await current_session.execute(text("select pg_sleep(:s)"), {"s": sleep})
            payload = await current_session.scalar(
                select(row_cls.payload).where(row_cls.id == row_id)
            )
            same = current_session() is session and scoped() is session
            if commit:
                await current_session.commit()
        except asyncio.CancelledError:
            counters["cancelled"] += 1
            raise
        except Exception:
            counters["raised"] += 1
            raise
        counters["completed"] += 1
        return {"n": n, "id": row_id, "payload": payload, "same": same, "committed": commit}

    @app.get("/stats")
    async def stats() -> dict[str, object]:
        trim = request.args.get("trim") == "1"
        collected = gc.collect() if trim or request.args.get("gc") == "1" else None
        trimmed = malloc_trim() if trim else None
        pool = engine.pool
        return {
            "registry": len(scoped.registry),
            "checked_out": pool.checkedout() if isinstance(pool, QueuePool) else None,
            "rss_kb": rss_kb(),
            "gc_collected": collected,
            "trimmed": trimmed,
            "counters": dict(counters),
        }

    return Server(app, engine, scoped, table)


# --- serving it (the --serve mode, in the subprocess) ---------------------------------------


def serve(
    url: str,
    application_name: str,
    table: str,
    pool_size: int,
    max_overflow: int,
    *,
    fd: int | None,
    port: int,
) -> int:
    """Serve the app with hypercorn on *fd* (or *port*) until SIGTERM or SIGINT."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    warnings.simplefilter("always")  # every SAWarning on stderr, not only the first
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s [%(name)s] %(message)s", stream=sys.stderr
    )
    server = build_app(url, application_name, table, pool_size, max_overflow)
    config = Config()
    if fd is not None:
        config.bind = [f"fd://{fd}"]
    else:
        config.bind = [f"{HOST}:{port}"]
    config.backlog = 1024
    config.graceful_timeout = 5.0
    config.keep_alive_timeout = SERVER_KEEP_ALIVE
    config.accesslog = None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await hypercorn_serve(server.app, config, shutdown_trigger=stop.wait)

    asyncio.run(run())
    return 0
