"""async_scoped_session in Flask async views, on the shared loop: aiosqlite and asyncpg."""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import threading
import typing as t
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import httpx
import pytest
from flask import Flask, g
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import make_server

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session
from async_scoped_session_ext._runner import runner

from .support.databases import database_url, engine_on_shared_loop, postgres_url
from .support.models import Base, Todo

POOL_SIZE, MAX_OVERFLOW = 5, 10


@pytest.fixture
def app_name() -> str:
    """A PostgreSQL application_name unique to the test, to find its backends."""
    return f"asse-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def engine(async_backend: str, tmp_path: Path, app_name: str) -> cabc.Iterator[AsyncEngine]:
    """A pooled async engine whose connections live on the shared loop."""
    connect_args: dict[str, t.Any] = {}
    if async_backend == "asyncpg":
        connect_args = {"server_settings": {"application_name": app_name}}
    with engine_on_shared_loop(
        database_url(async_backend, tmp_path),
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        connect_args=connect_args,
    ) as engine:
        yield engine


@pytest.fixture
def app() -> Flask:
    """A bare Flask app in testing mode."""
    app = Flask(__name__)
    app.testing = True
    return app


@pytest.fixture
def scoped(app: Flask, engine: AsyncEngine) -> async_scoped_session[AsyncSession]:
    """An async_scoped_session initialised on the Flask app."""
    return async_scoped_session(async_sessionmaker(engine), app)


class Server:
    """A threaded werkzeug server on a free loopback port."""

    def __init__(self, app: Flask) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


def backends(app_name: str) -> list[tuple[int, str]]:
    """(pid, state) of the PostgreSQL backends opened with *app_name*."""
    engine = create_engine(postgres_url("psycopg"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("select pid, state from pg_stat_activity where application_name = :name"),
                {"name": app_name},
            ).all()
    finally:
        engine.dispose()
    return [(row.pid, row.state) for row in rows]


class BackendSampler:
    """Samples how many PostgreSQL backends an application_name holds, every 10 ms."""

    def __init__(self, app_name: str | None) -> None:
        self.app_name = app_name
        self.most = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        engine = create_engine(postgres_url("psycopg"))
        try:
            with engine.connect() as conn:
                while not self.stop.wait(0.01):
                    count = conn.execute(
                        text("select count(*) from pg_stat_activity where application_name = :n"),
                        {"n": self.app_name},
                    ).scalar_one()
                    conn.rollback()
                    self.most = max(self.most, count)
        finally:
            engine.dispose()

    def __enter__(self) -> BackendSampler:
        if self.app_name is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)


def test_pooled_engine_across_requests(
    app: Flask,
    scoped: async_scoped_session[AsyncSession],
    engine: AsyncEngine,
    async_backend: str,
    app_name: str,
) -> None:
    """120 requests (60 sequential, 60 from 8 threads) share a pool and see one session each."""
    sightings: list[tuple[int, int, int]] = []
    is_postgres = async_backend == "asyncpg"

    @app.before_request
    async def before() -> None:
        g.before_session = current_session()
        await current_session.execute(text("select 1"))

    @app.get("/")
    async def view() -> str:
        g.view_session = scoped()
        query = "select pg_backend_pid()" if is_postgres else "select 0"
        pid = (await current_session.execute(text(query))).scalar_one()
        current_session.add(Todo(title="uncommitted"))
        await current_session.flush()
        return str(pid)

    @app.teardown_appcontext  # registered after ours, so Flask runs it first
    async def record(exc: BaseException | None) -> None:
        sightings.append((id(g.before_session), id(g.view_session), id(scoped())))

    with (
        Server(app) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
        BackendSampler(app_name if is_postgres else None) as sampler,
    ):
        sequential = [client.get("/") for _ in range(60)]

        def fetch(_: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=10) as own:
                return own.get("/")

        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(fetch, range(60)))

    responses = sequential + concurrent
    assert [r.status_code for r in responses] == [200] * 120, responses[0].text
    assert len(sightings) == 120
    assert all(before == view == teardown for before, view, teardown in sightings)
    assert len(scoped.registry) == 0
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    if is_postgres:
        assert len({r.text for r in sequential}) == 1, "sequential requests did not reuse"
        assert 0 < sampler.most <= POOL_SIZE + MAX_OVERFLOW
        left = backends(app_name)
        assert len(left) <= POOL_SIZE
        assert [state for _, state in left if state != "idle"] == []
    assert runner.run(_count(engine)) == 0, "uncommitted rows survived teardown"


async def _count(engine: AsyncEngine) -> int:
    async with AsyncSession(engine) as session:
        return await session.scalar(select(func.count()).select_from(Todo)) or 0


def test_views_hooks_and_teardowns_run_on_the_shared_loop(
    app: Flask, scoped: async_scoped_session[AsyncSession]
) -> None:
    """The app's async code all runs on one loop, not asgiref's loop per call."""
    loops: list[asyncio.AbstractEventLoop] = []

    @app.before_request
    async def before() -> None:
        loops.append(asyncio.get_running_loop())

    @app.get("/")
    async def view() -> str:
        loops.append(asyncio.get_running_loop())
        return "ok"

    client = app.test_client()
    client.get("/")
    client.get("/")
    assert len(loops) == 4
    assert {id(loop) for loop in loops} == {id(runner.loop)}


def test_foreign_loop_raises_clear_error(
    app: Flask, scoped: async_scoped_session[AsyncSession]
) -> None:
    """Awaiting the session under a hand-made asyncio.run() says what to do instead."""

    async def query() -> int:
        result = await current_session.execute(text("select 1"))
        return int(result.scalar_one())

    @app.get("/sync")
    def sync_view() -> str:
        return str(asyncio.run(query()))

    @app.get("/async")
    async def async_view() -> str:
        return str(await query())

    client = app.test_client()
    with pytest.raises(RuntimeError, match=r"session\.run\(coro\)"):
        client.get("/sync")
    assert client.get("/async").text == "1", "the pool was poisoned by the foreign loop"


@pytest.mark.parametrize("async_backend", ["asyncpg"])
def test_fresh_on_a_foreign_loop_raises_clear_error(
    app: Flask, scoped: async_scoped_session[AsyncSession]
) -> None:
    """``fresh()`` under a hand-made asyncio.run() refuses the foreign loop, as the scoped
    session does, and leaves the pool unpoisoned for the next requests."""

    async def work() -> None:
        async with scoped.fresh() as session:
            await session.execute(text("select 1"))

    @app.get("/")
    async def view() -> str:
        async with scoped.fresh() as session:
            first = (await session.execute(text("select 1"))).scalar_one()
        return str(first + (await current_session.execute(text("select 1"))).scalar_one())

    with app.app_context():
        with pytest.raises(RuntimeError, match="used from an event loop that is not the app's"):
            asyncio.run(asyncio.wait_for(work(), timeout=10))
    client = app.test_client()
    for _ in range(3):
        response = client.get("/")
        assert (response.status_code, response.text) == (200, "2")


@pytest.mark.parametrize("async_backend", ["asyncpg"])
def test_configure_bind_outside_an_app_context(engine: AsyncEngine) -> None:
    """The app-factory pattern: ``configure(bind=engine)`` at import time, then
    ``init_app(app)``; async views use that engine."""
    asession = async_scoped_session(async_sessionmaker())  # module level: no engine yet
    asession.configure(bind=engine)  # outside any app context
    app = Flask(__name__)
    app.testing = True
    asession.init_app(app)

    @app.post("/<title>")
    async def add(title: str) -> str:
        current_session.add(Todo(title=title))
        await current_session.commit()
        assert current_session().bind is engine
        return str(await current_session.scalar(select(func.count()).select_from(Todo)))

    client = app.test_client()
    assert client.post("/a").text == "1"
    assert client.post("/b").text == "2"


@pytest.mark.parametrize("async_backend", ["asyncpg"])
async def test_remove_outside_an_app_context_does_nothing(
    app: Flask, scoped: async_scoped_session[AsyncSession], engine: AsyncEngine
) -> None:
    """``await remove()`` outside an app context (a unittest ``asyncTearDown``) is a no-op."""
    with app.app_context():
        assert scoped.run(scoped.scalar(text("select 1"))) == 1
    await scoped.remove()  # tearDown, after the context has gone
    await scoped.remove()
    assert len(scoped.registry) == 0
    assert runner.run(_count(engine)) == 0


def test_opt_out_keeps_asgiref_and_refuses_the_scoped_session(engine: AsyncEngine) -> None:
    """With shared_loop=False asgiref runs the views, and the scoped session explains why not."""
    pytest.importorskip("asgiref")
    app = Flask(__name__)
    app.testing = True
    async_scoped_session(async_sessionmaker(engine), app, shared_loop=False)
    assert app.async_to_sync.__func__ is Flask.async_to_sync  # type: ignore[attr-defined]

    @app.get("/")
    async def view() -> str:
        await current_session.execute(text("select 1"))
        return "unreachable"

    with pytest.raises(RuntimeError, match="shared_loop=False"):
        app.test_client().get("/")


def test_mixed_sync_and_async_views(
    app: Flask, scoped: async_scoped_session[AsyncSession], tmp_path: Path
) -> None:
    """current_session is the sync session in sync views and the async one in async views."""
    sync_engine: Engine = create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    Base.metadata.create_all(sync_engine)
    sync_scoped = flask_scoped_session(sessionmaker(bind=sync_engine), app)

    @app.get("/sync")
    def sync_view() -> str:
        assert current_session._get_current_object() is sync_scoped
        current_session.add(Todo(title="sync"))
        current_session.commit()
        return str(current_session.scalar(select(func.count()).select_from(Todo)))

    @app.get("/async")
    async def async_view() -> str:
        assert current_session._get_current_object() is scoped
        result = await current_session.scalar(select(func.count()).select_from(Todo))
        return str(result)

    client = app.test_client()
    try:
        assert client.get("/sync").text == "1"
        assert client.get("/async").text == "0"
        assert isinstance(sync_scoped.session_factory(), Session)
    finally:
        sync_engine.dispose()


def test_cli_command_awaits_the_session(
    app: Flask, scoped: async_scoped_session[AsyncSession]
) -> None:
    """A flask command awaits queries through run(); its session is closed afterwards."""
    sessions: list[AsyncSession] = []

    async def add_and_count(title: str) -> int:
        sessions.append(current_session())
        current_session.add(Todo(title=title))
        await current_session.commit()
        return await current_session.scalar(select(func.count()).select_from(Todo)) or 0

    @app.cli.command("add")
    @click.argument("title")
    def add(title: str) -> None:
        click.echo(f"{scoped.run(add_and_count(title))} todos")

    result = app.test_cli_runner().invoke(args=["add", "write docs"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 todos"
    assert len(sessions) == 1 and not sessions[0].in_transaction()
    assert len(scoped.registry) == 0


def test_run_refuses_inside_a_running_loop(
    app: Flask, scoped: async_scoped_session[AsyncSession]
) -> None:
    """run() from async code raises instead of deadlocking: await instead."""

    @app.get("/")
    async def view() -> str:
        with pytest.raises(RuntimeError, match="await the coroutine directly"):
            scoped.run(asyncio.sleep(0))
        return "ok"

    assert app.test_client().get("/").text == "ok"


def test_context_pushed_inside_an_async_view(
    app: Flask, scoped: async_scoped_session[AsyncSession], engine: AsyncEngine
) -> None:
    """A nested app context torn down on the shared loop's thread still closes its session."""
    inner_sessions: list[AsyncSession] = []

    @app.get("/")
    async def view() -> str:
        outer = current_session()
        with app.app_context():
            inner_sessions.append(current_session())
            await current_session.execute(text("select 1"))
        await asyncio.sleep(0.05)  # the inner close was scheduled on this loop
        assert current_session() is outer
        return "ok"

    assert app.test_client().get("/").text == "ok"
    assert not inner_sessions[0].in_transaction()
