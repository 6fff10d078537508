"""Recorded queries (``SQLALCHEMY_RECORD_QUERIES``): sync Flask on pysqlite and psycopg,
Flask async views and Quart on aiosqlite and asyncpg."""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import sys
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import (
    EngineRegistry,
    async_scoped_session,
    flask_scoped_session,
)
from async_scoped_session_ext import record_queries as rq
from async_scoped_session_ext.record_queries import QueryInfo, get_recorded_queries

from .support.databases import database_url, engine_on_shared_loop
from .support.environment import needs_quart
from .support.models import Todo

if t.TYPE_CHECKING:
    from quart import Quart

WAIT = 10.0  # seconds a concurrent request may wait for the other


def here() -> int:
    """The line after the caller's: where the test's next statement runs."""
    return sys._getframe(1).f_lineno + 1


def located(line: int, function: str) -> str:
    return f"{__file__}:{line} ({function})"


def values(parameters: t.Any) -> list[t.Any]:
    """The values in a statement's parameters (a tuple, a dict, or a list of them)."""
    if isinstance(parameters, dict):
        return list(parameters.values())
    if isinstance(parameters, list | tuple):
        return [value for item in parameters for value in values(item)]
    return [parameters]


def is_listened(engine: Engine | AsyncEngine) -> bool:
    core = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    return event.contains(core, "before_cursor_execute", rq._started)


def check_select_then_insert(
    queries: list[QueryInfo], lines: list[int], view: str, before: float, after: float
) -> None:
    """The view's SELECT ... WHERE title = 'needle', then its INSERT, each where it ran."""
    assert [type(query) for query in queries] == [QueryInfo, QueryInfo]
    select_, insert = queries
    assert select_.statement.lstrip().upper().startswith("SELECT")
    assert "asse_test_todo" in select_.statement
    assert "needle" in values(select_.parameters)
    assert insert.statement.lstrip().upper().startswith("INSERT INTO asse_test_todo".upper())
    assert "written" in values(insert.parameters)
    assert [select_.location, insert.location] == [located(line, view) for line in lines]
    assert before <= select_.start_time <= select_.end_time <= insert.start_time
    assert insert.start_time <= insert.end_time <= after
    for query in queries:
        assert query.duration == query.end_time - query.start_time
        assert query.duration >= 0


def test_outside_a_context_nothing_is_recorded() -> None:
    """Outside any app context the list is empty."""
    assert get_recorded_queries() == []


# -- sync Flask --------------------------------------------------------------------------------


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.testing = True
    app.config["SQLALCHEMY_RECORD_QUERIES"] = True
    return app


def recorder(app: Flask) -> list[list[QueryInfo]]:
    """Each request's recorded queries, as an ``after_request`` hook sees them."""
    seen: list[list[QueryInfo]] = []

    @app.after_request
    def keep(response: t.Any) -> t.Any:
        seen.append(get_recorded_queries())
        return response

    return seen


def test_flask_records_the_request_statements(app: Flask, sync_engine: Engine) -> None:
    """Statement, parameters, times and the view's own lines, still there in after_request."""
    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    seen, lines = recorder(app), []

    @app.post("/")
    def add() -> str:
        lines.append(here())
        scoped.scalars(select(Todo).where(Todo.title == "needle")).all()
        scoped.add(Todo(title="written"))
        lines.append(here())
        scoped.commit()
        return "ok"

    before = time.perf_counter()
    assert app.test_client().post("/").status_code == 200
    check_select_then_insert(seen[0], lines, "add", before, time.perf_counter())
    assert app.test_client().get("/missing").status_code == 404
    assert seen[1] == []  # each request its own list


def test_flask_recording_off_listens_to_nothing(sync_engine: Engine) -> None:
    """Without the setting no event is added to the engine, and nothing is recorded."""
    app = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    seen = recorder(app)

    @app.get("/")
    def index() -> str:
        scoped.execute(text("select 1"))
        return "ok"

    app.test_client().get("/")
    assert seen == [[]]
    assert not is_listened(sync_engine)


def test_flask_turning_it_on_and_off(sync_engine: Engine) -> None:
    """On: from the app's next session; off: from the next statement."""
    app = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    seen = recorder(app)

    @app.get("/")
    def index() -> str:
        scoped.execute(text("select 1"))
        return "ok"

    client = app.test_client()
    client.get("/")
    app.config["SQLALCHEMY_RECORD_QUERIES"] = True
    client.get("/")
    app.config["SQLALCHEMY_RECORD_QUERIES"] = False
    client.get("/")
    assert [len(queries) for queries in seen] == [0, 1, 0]


def test_flask_another_app_on_the_same_engine(app: Flask, sync_engine: Engine) -> None:
    """An app with recording off records nothing, though the engine it shares is listened."""
    factory = sessionmaker(sync_engine)
    quiet = Flask(__name__)
    for each in (app, quiet):
        scoped = flask_scoped_session(factory, each)
        each.add_url_rule("/", "index", lambda scoped=scoped: str(scoped.scalar(text("select 1"))))
    seen, quiet_seen = recorder(app), recorder(quiet)
    app.test_client().get("/")
    quiet.test_client().get("/")
    assert is_listened(sync_engine)
    assert [len(seen[0]), quiet_seen] == [1, [[]]]


def test_flask_concurrent_requests_keep_their_own(app: Flask, sync_engine: Engine) -> None:
    """Two requests in flight at once, in two threads: each sees its own statement only."""
    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    both_ran = threading.Barrier(2, timeout=WAIT)

    @app.get("/<title>")
    def find(title: str) -> list[t.Any]:
        scoped.scalars(select(Todo).where(Todo.title == title)).all()
        both_ran.wait()  # the other request's statement ran too
        return [values(query.parameters) for query in get_recorded_queries()]

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda title: app.test_client().get(f"/{title}"), "ab"))
    assert [response.json for response in responses] == [[["a"]], [["b"]]]


def test_flask_config_engine_fresh_and_app_context(
    app: Flask, sync_backend: str, tmp_path: Path, sync_engine: Engine
) -> None:
    """Engines made from the config, a ``fresh()`` session first, outside any request."""
    app.config["SQLALCHEMY_ENGINES"] = {"default": database_url(sync_backend, tmp_path)}
    scoped: flask_scoped_session[Session] = flask_scoped_session(app=app)
    with app.app_context():
        with scoped.fresh() as session:
            line = here()
            session.execute(text("select 1"))
        scoped.execute(text("select 2"))
        queries = get_recorded_queries()
        assert [query.statement for query in queries] == ["select 1", "select 2"]
        assert queries[0].location == located(
            line, "test_flask_config_engine_fresh_and_app_context"
        )
        queries.clear()  # a copy: the record keeps its own
        assert len(get_recorded_queries()) == 2
    with app.app_context():
        assert get_recorded_queries() == []  # a new context, a new list


def test_flask_fresh_in_another_app(app: Flask, sync_engine: Engine) -> None:
    """``fresh()`` of a scoped session of another app: that app's engines, not this one's."""
    other = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(sync_engine), other)
    with app.app_context(), scoped.fresh() as session:
        session.execute(text("select 1"))
        assert get_recorded_queries() == []
    assert not is_listened(sync_engine)


def test_flask_isolated_test(app: Flask, sync_engine: Engine) -> None:
    """In a test isolated by ``testing.isolate``, the statements are recorded too."""
    from async_scoped_session_ext.testing import isolate

    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    seen = recorder(app)
    app.add_url_rule("/", "index", lambda: str(scoped.scalar(text("select 7"))))
    with isolate(app):
        assert app.test_client().get("/").text == "7"
    # The session joins the test's transaction with a savepoint: a statement of its own.
    assert [query.statement for query in seen[0]] == ["SAVEPOINT sa_savepoint_1", "select 7"]


def test_location_without_any_code_of_yours() -> None:
    """A statement with only library frames below it (in a thread the library started)."""
    found: list[str] = []
    code = "def target():\n    found.append(_location())\n"
    namespace: dict[str, t.Any] = {"__name__": "sqlalchemy.x", "found": found}
    namespace["_location"] = rq._location
    exec(code, namespace)  # a function that SQLAlchemy's module would hold
    thread = threading.Thread(target=namespace["target"])  # threading's frames below it
    thread.start()
    thread.join(WAIT)
    assert found == ["<unknown>"]


def test_flask_engine_registry(app: Flask, sync_backend: str, tmp_path: Path) -> None:
    """The engines an ``EngineRegistry`` makes are listened to as well."""
    registry = EngineRegistry(app=app)
    try:
        with app.app_context():
            registry[database_url(sync_backend, tmp_path)].execute(text("select 1"))
            assert [query.statement for query in get_recorded_queries()] == ["select 1"]
    finally:
        registry.close()


# -- Flask async views -------------------------------------------------------------------------


@pytest.fixture
def shared_engine(async_backend: str, tmp_path: Path) -> cabc.Iterator[AsyncEngine]:
    """An async engine with fresh tables, its connections on the shared loop."""
    with engine_on_shared_loop(database_url(async_backend, tmp_path)) as engine:
        yield engine


def test_flask_async_records_the_request_statements(app: Flask, shared_engine: AsyncEngine) -> None:
    """In an async view the statement runs in SQLAlchemy's greenlet; the view is found."""
    scoped = async_scoped_session(async_sessionmaker(shared_engine), app)
    seen, lines = recorder(app), []

    @app.post("/")
    async def add() -> str:
        lines.append(here())
        (await scoped.scalars(select(Todo).where(Todo.title == "needle"))).all()
        scoped.add(Todo(title="written"))
        lines.append(here())
        await scoped.commit()
        return "ok"

    before = time.perf_counter()
    assert app.test_client().post("/").status_code == 200
    check_select_then_insert(seen[0], lines, "add", before, time.perf_counter())


def test_flask_async_off_and_concurrent(app: Flask, shared_engine: AsyncEngine) -> None:
    """Off: nothing listens. On: two async views in flight at once each see their own."""
    app.config["SQLALCHEMY_RECORD_QUERIES"] = False
    scoped = async_scoped_session(async_sessionmaker(shared_engine), app)
    ran = {"a": asyncio.Event(), "b": asyncio.Event()}  # bound to the shared loop on use

    @app.get("/<title>")
    async def find(title: str) -> list[t.Any]:
        (await scoped.scalars(select(Todo).where(Todo.title == title))).all()
        if title in ran:
            ran[title].set()
            await asyncio.wait_for(ran["b" if title == "a" else "a"].wait(), WAIT)
        return [values(query.parameters) for query in get_recorded_queries()]

    assert app.test_client().get("/off").json == []
    assert not is_listened(shared_engine)
    app.config["SQLALCHEMY_RECORD_QUERIES"] = True
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda title: app.test_client().get(f"/{title}"), "ab"))
    assert [response.json for response in responses] == [[["a"]], [["b"]]]


# -- Quart -------------------------------------------------------------------------------------


@pytest.fixture
def quart_app() -> Quart:
    from quart import Quart

    app = Quart(__name__)
    app.testing = True
    app.config["SQLALCHEMY_RECORD_QUERIES"] = True
    return app


@needs_quart
async def test_quart_records_the_request_statements(
    quart_app: Quart, async_engine: AsyncEngine
) -> None:
    """In a Quart view: statement, parameters, times and the view's own lines."""
    scoped = async_scoped_session(async_sessionmaker(async_engine), quart_app)
    seen: list[list[QueryInfo]] = []
    lines: list[int] = []

    @quart_app.after_request
    async def keep(response: t.Any) -> t.Any:
        seen.append(get_recorded_queries())
        return response

    @quart_app.post("/")
    async def add() -> str:
        lines.append(here())
        (await scoped.scalars(select(Todo).where(Todo.title == "needle"))).all()
        scoped.add(Todo(title="written"))
        lines.append(here())
        await scoped.commit()
        return "ok"

    before = time.perf_counter()
    assert (await quart_app.test_client().post("/")).status_code == 200
    check_select_then_insert(seen[0], lines, "add", before, time.perf_counter())


@needs_quart
async def test_quart_concurrent_requests_keep_their_own(
    quart_app: Quart, async_engine: AsyncEngine
) -> None:
    """Two requests in flight at once on one loop (``asyncio.gather``): each its own."""
    scoped = async_scoped_session(async_sessionmaker(async_engine), quart_app)
    ran = {"a": asyncio.Event(), "b": asyncio.Event()}

    @quart_app.get("/<title>")
    async def find(title: str) -> list[t.Any]:
        (await scoped.scalars(select(Todo).where(Todo.title == title))).all()
        ran[title].set()
        await asyncio.wait_for(ran["b" if title == "a" else "a"].wait(), WAIT)
        return [values(query.parameters) for query in get_recorded_queries()]

    client = quart_app.test_client()
    responses = await asyncio.gather(client.get("/a"), client.get("/b"))
    assert [await response.get_json() for response in responses] == [[["a"]], [["b"]]]


@needs_quart
async def test_quart_another_app_on_the_same_engine(
    quart_app: Quart, async_engine: AsyncEngine
) -> None:
    """Recording off in one of two apps sharing the engine; outside a context, nothing."""
    from quart import Quart

    factory = async_sessionmaker(async_engine)
    quiet = Quart(__name__)
    seen: list[list[QueryInfo]] = []
    for each in (quart_app, quiet):
        scoped: async_scoped_session[AsyncSession] = async_scoped_session(factory, each)
        async with each.app_context():
            await scoped.execute(text("select 1"))
            seen.append(get_recorded_queries())
    assert [len(queries) for queries in seen] == [1, 0]
    assert is_listened(async_engine)
    async with AsyncSession(async_engine) as session:  # the listener, outside any context
        await session.execute(text("select 1"))
    assert get_recorded_queries() == []
