"""EngineRegistry across lifetimes: ``fresh()`` sessions that outlive their request, and
evicted engines in a forked child. On PostgreSQL (psycopg, asyncpg).

Both keys of the registries here name the test database: each key still has an engine (and
a pool) of its own, and a pooled connection is a backend whose pid shows which one it is.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import typing as t

import pytest
from flask import Flask
from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import EngineRegistry, async_scoped_session, flask_scoped_session
from async_scoped_session_ext._runner import runner

from .support.databases import postgres_url, require_postgres
from .support.scripts import run_script

PID = text("select pg_backend_pid()")
WAIT = 10.0  # seconds any one wait may take


class Closes:
    """Counts the connections an engine closed."""

    def __init__(self) -> None:
        self.count = 0
        self.engines: list[Engine] = []

    def watch(self, engine: Engine | AsyncEngine) -> None:
        core = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        if not any(known is core for known in self.engines):
            self.engines.append(core)
            event.listen(core, "close", self._closed)

    def _closed(self, *args: object) -> None:
        self.count += 1


def wait_until(predicate: t.Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def registry_app(is_async: bool) -> tuple[Flask, EngineRegistry]:
    """A Flask app with its own session and a registry of two keys on the test database."""
    require_postgres()
    url = postgres_url("asyncpg" if is_async else "psycopg")
    registry = EngineRegistry(lambda key: url, is_async=is_async, max_engines=1)
    app = Flask(__name__)
    app.testing = True
    if is_async:
        async_scoped_session(async_sessionmaker(), app)
    else:
        flask_scoped_session(sessionmaker(), app)
    registry.init_app(app)
    return app, registry


# -- a fresh() session outlives its request ------------------------------------------------


class SyncHolder:
    """A thread, started by a request, that keeps a ``fresh()`` session open until told."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.opened, self.use, self.used, self.close = (threading.Event() for _ in range(4))
        self.thread: threading.Thread | None = None

    def start(self, scoped: flask_scoped_session[Session]) -> None:
        self.thread = threading.Thread(target=self._hold, args=(scoped,), daemon=True)
        self.thread.start()
        assert self.opened.wait(WAIT)

    def _hold(self, scoped: flask_scoped_session[Session]) -> None:
        with scoped.fresh() as session:
            self.pids.append(session.execute(PID).scalar_one())
            session.commit()  # idle: no connection checked out while it waits
            self.opened.set()
            if self.use.wait(WAIT):
                self.pids.append(session.execute(PID).scalar_one())
                session.commit()
                self.used.set()
            self.close.wait(WAIT)

    def finish(self) -> None:
        self.use.set()
        self.close.set()
        if self.thread is not None:
            self.thread.join(WAIT)


def test_fresh_session_keeps_an_evicted_engine_alive() -> None:
    """A ``registry[key].fresh()`` session still open after its request keeps the evicted
    engine: it works on, and the engine is disposed by ``reap()`` once it is closed."""
    app, registry = registry_app(is_async=False)
    holder, closes = SyncHolder(), Closes()

    @app.post("/hold/<key>")
    def hold(key: str) -> str:
        scoped = t.cast("flask_scoped_session[Session]", registry[key])
        closes.watch(scoped.session_factory.kw["bind"])
        holder.start(scoped)
        return "holding"

    @app.get("/<key>")
    def use(key: str) -> str:
        return str(t.cast(Session, registry[key]).execute(PID).scalar_one())

    client = app.test_client()
    try:
        assert client.post("/hold/a").text == "holding"
        assert client.get("/b").status_code == 200  # evicts a, whose fresh session is open
        assert registry.keys() == ["b"]
        assert (registry.disposed, registry.reap()) == (0, 1)
        holder.use.set()
        assert holder.used.wait(WAIT), "the fresh session failed after its engine was evicted"
        assert holder.pids[1] == holder.pids[0], "the evicted engine's pool was replaced"
        assert (registry.disposed, closes.count) == (0, 0)
        holder.finish()
        assert holder.thread is not None and not holder.thread.is_alive()
        assert registry.reap() == 0
        assert (registry.disposed, closes.count) == (1, 1)
    finally:
        holder.finish()
        registry.close()


class AsyncHolder:
    """A task, started by a Flask async view, that keeps a ``fresh()`` session open."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self, scoped: async_scoped_session[AsyncSession]) -> None:
        self.use, self.used, self.close = asyncio.Event(), asyncio.Event(), asyncio.Event()
        opened = asyncio.Event()
        self.task = asyncio.create_task(self._hold(scoped, opened))
        await asyncio.wait_for(opened.wait(), WAIT)

    async def _hold(
        self, scoped: async_scoped_session[AsyncSession], opened: asyncio.Event
    ) -> None:
        async with scoped.fresh() as session:
            self.pids.append((await session.execute(PID)).scalar_one())
            await session.commit()  # idle: no connection checked out while it waits
            opened.set()
            await self.use.wait()
            self.pids.append((await session.execute(PID)).scalar_one())
            await session.commit()
            self.used.set()
            await self.close.wait()

    async def use_again(self) -> None:
        self.use.set()
        await asyncio.wait_for(self.used.wait(), WAIT)

    async def finish(self) -> None:
        if self.task is not None:
            self.use.set()
            self.close.set()
            await asyncio.wait_for(self.task, WAIT)


def test_async_fresh_session_keeps_an_evicted_engine_alive() -> None:
    """The same on asyncpg in Flask async views: the fresh session's task outlives its
    request, and the engine is disposed on the shared loop once the session is closed."""
    app, registry = registry_app(is_async=True)
    holder, closes = AsyncHolder(), Closes()

    @app.post("/hold/<key>")
    async def hold(key: str) -> str:
        scoped = t.cast("async_scoped_session[AsyncSession]", registry[key])
        closes.watch(scoped.session_factory.kw["bind"])
        await holder.start(scoped)
        return "holding"

    @app.get("/<key>")
    async def use(key: str) -> str:
        scoped = t.cast("async_scoped_session[AsyncSession]", registry[key])
        return str((await scoped.execute(PID)).scalar_one())

    client = app.test_client()
    try:
        assert client.post("/hold/a").text == "holding"
        assert client.get("/b").status_code == 200  # evicts a, whose fresh session is open
        assert registry.keys() == ["b"]
        assert (registry.disposed, registry.reap()) == (0, 1)
        runner.run(holder.use_again())
        assert holder.pids[1] == holder.pids[0], "the evicted engine's pool was replaced"
        assert (registry.disposed, closes.count) == (0, 0)
        runner.run(holder.finish())
        assert registry.reap() == 0
        assert registry.disposed == 1
        wait_until(lambda: closes.count == 1, "the disposal on the shared loop")
    finally:
        runner.run(holder.finish())
        registry.close()


# -- an evicted engine in a forked child ---------------------------------------------------

FORK_SCRIPT = """
    import json
    import sys
    import time

    from flask import Flask
    from sqlalchemy import create_engine, text
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.pool import NullPool

    from async_scoped_session_ext import EngineRegistry, async_scoped_session
    from async_scoped_session_ext._runner import runner
    from tests.support.forkprobe import in_forked_child

    url, sync_url, child_uses_a = sys.argv[1], sys.argv[2], sys.argv[3] == "yes"
    PID = text("select pg_backend_pid()")
    # A query waits 5 s at most: a broken connection fails, never hangs.
    options = {"connect_args": {"command_timeout": 5, "timeout": 5}}
    registry = EngineRegistry(lambda key: url, is_async=True, max_engines=1, engine_options=options)
    app = Flask(__name__)
    app.testing = True
    async_scoped_session(async_sessionmaker(), app)
    registry.init_app(app)


    @app.get("/<key>")
    async def pid_view(key):
        return str((await registry[key].execute(PID)).scalar_one())


    def backend_pid(key):
        try:
            return app.test_client().get(f"/{key}").text
        except Exception as error:
            return f"error: {error!r}"


    def backend_gone(pid, timeout=5):
        checker = create_engine(sync_url, poolclass=NullPool)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with checker.connect() as conn:
                    query = text("select count(*) from pg_stat_activity where pid = :pid")
                    if conn.execute(query, {"pid": int(pid)}).scalar_one() == 0:
                        return True
                time.sleep(0.05)
            return False
        finally:
            checker.dispose()


    def probe():
        on_parent_loop = []
        parent_loop.call_soon_threadsafe = lambda *args, **kw: on_parent_loop.append(args)
        in_child = backend_pid("a") if child_uses_a else None
        other = backend_pid("b")  # evicts a
        gone = backend_gone(in_child) if in_child and in_child.isdigit() else None
        return {
            "in_child": in_child,
            "other": other,
            "gone": gone,
            "keys": registry.keys(),
            "disposed": registry.disposed,
            "on_parent_loop": len(on_parent_loop),
        }


    before = backend_pid("a")
    parent_loop = runner.loop
    in_child, status = in_forked_child(probe)
    after = backend_pid("a")
    registry.close()
    print(json.dumps({"before": before, "child": in_child, "status": status, "after": after}))
"""


@pytest.mark.parametrize("child_uses_a", ["yes", "no"], ids=["child-used-it", "parent-only"])
def test_forked_child_disposes_an_evicted_engine_by_its_own_means(child_uses_a: str) -> None:
    """In a forked child, an async engine first used in the parent is disposed on the
    child's own loop when evicted: never through the parent's loop, nothing hangs, the
    child's connection is closed and the parent's stays usable."""
    require_postgres()
    urls = (postgres_url("asyncpg"), postgres_url("psycopg"))
    stdout = run_script(
        FORK_SCRIPT, *urls, child_uses_a, warnings=("error", "ignore::ResourceWarning")
    )
    result = json.loads(stdout)
    before, child, after = result["before"], result["child"], result["after"]
    assert before.isdigit(), before
    assert result["status"] == 0 and isinstance(child, dict), f"the child failed or hung: {result}"
    assert child["other"].isdigit() and child["keys"] == ["b"], result
    assert child["disposed"] == 1, result
    assert child["on_parent_loop"] == 0, f"the child used the parent's event loop: {result}"
    if child_uses_a == "yes":
        assert child["in_child"].isdigit() and child["in_child"] != before, result
        assert child["gone"] is True, f"the child's connection of the evicted engine: {result}"
    assert after == before, f"the parent's pooled connection broke in the fork: {result}"
