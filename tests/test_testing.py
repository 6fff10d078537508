"""``testing.isolate`` / ``aisolate``: an app's sessions in a transaction rolled back at the end."""

from __future__ import annotations

import asyncio
import logging
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Connection, Engine, create_engine, func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session
from async_scoped_session_ext._runner import runner
from async_scoped_session_ext.replicas import replica_sessionmaker
from async_scoped_session_ext.testing import aisolate, isolate

from .support.databases import connect_admin, database_url, engine_on_shared_loop
from .support.environment import HAS_QUART, needs_quart
from .support.models import Base, Todo

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

if t.TYPE_CHECKING:
    from flask.sansio.app import App

COUNT = select(func.count(Todo.id))


def flask_app(scoped: flask_scoped_session[t.Any]) -> Flask:
    """A Flask app whose views add a todo and commit, and count todos."""
    app = Flask(__name__)
    scoped.init_app(app)

    @app.post("/<title>")
    def add(title: str) -> dict[str, int | None]:
        current_session.add(Todo(title=title))
        current_session.commit()
        return {"count": current_session.scalar(COUNT)}

    return app


def count_sync(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(COUNT) or 0


def test_sync_flask_commits_are_rolled_back(sync_engine: Engine) -> None:
    """A view's commit and the test's own commit are seen inside, gone after."""
    app = flask_app(flask_scoped_session(sessionmaker(sync_engine)))
    with isolate(app) as db:
        assert app.test_client().post("/a").json == {"count": 1}
        session = db.session()
        session.add(Todo(title="b"))
        session.commit()
        assert app.test_client().post("/c").json == {"count": 3}
        assert [c.engine for c in db.connections] == [sync_engine]
    assert count_sync(sync_engine) == 0
    assert sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_failing_block_rolls_back_and_keeps_its_error(sync_engine: Engine) -> None:
    """The block's own exception comes out, and its commits are still rolled back."""
    app = flask_app(flask_scoped_session(sessionmaker(sync_engine)))
    with pytest.raises(ZeroDivisionError), isolate(app):
        assert app.test_client().post("/a").json == {"count": 1}
        1 / 0  # noqa: B018
    assert count_sync(sync_engine) == 0


def test_failing_cleanup_finishes_and_raises(
    sync_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A cleanup step that fails stops nothing: rolled back, returned, then raised or logged."""
    app = flask_app(flask_scoped_session(sessionmaker(sync_engine)))

    def broken_close() -> None:
        raise RuntimeError("close failed")

    with pytest.raises(RuntimeError, match="close failed"), isolate(app) as db:
        db.session().close = broken_close  # type: ignore[method-assign]
        app.test_client().post("/a")
    assert count_sync(sync_engine) == 0
    assert sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    with caplog.at_level(logging.ERROR), pytest.raises(KeyError), isolate(app) as db:
        db.session().close = broken_close  # type: ignore[method-assign]
        raise KeyError("the test's own error")
    assert "close failed" in caplog.text
    assert sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_fresh_sessions_and_contexts_join(sync_engine: Engine) -> None:
    """``fresh()`` sessions and hand-pushed contexts join the test's transaction too."""
    scoped = flask_scoped_session(sessionmaker(sync_engine))
    app = flask_app(scoped)
    with isolate(app) as db:
        with app.app_context():
            with scoped.fresh() as session:
                session.add(Todo(title="fresh"))
                session.commit()
            assert current_session.scalar(COUNT) == 1
        assert db.session().scalar(COUNT) == 1
    assert count_sync(sync_engine) == 0
    with app.app_context():  # the app's own factory again
        assert scoped.session_factory.kw["bind"] is sync_engine


def test_several_engines_and_replicas(tmp_path: Path) -> None:
    """Each engine gets one connection; replica reads see the test's own writes."""
    primary = create_engine(f"sqlite:///{tmp_path / 'primary.db'}")
    replica = create_engine(f"sqlite:///{tmp_path / 'primary.db'}")
    other = create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    for engine in (primary, other):
        Base.metadata.create_all(engine)
    reads = flask_scoped_session(replica_sessionmaker(primary, replica))
    app = flask_app(reads)
    archive = flask_scoped_session(sessionmaker(other), app, name="archive")
    try:
        with isolate(app) as db:
            assert len(db.connections) == 2
            assert app.test_client().post("/a").json == {"count": 1}
            with app.app_context():
                assert reads().get_bind(clause=COUNT) is db.connections[0]
                assert current_session.scalar(COUNT) == 1
                archive().add(Todo(title="archived"))
                archive().commit()
                assert archive().scalar(COUNT) == 1
        assert count_sync(primary) == count_sync(other) == 0
    finally:
        for engine in (primary, replica, other):
            engine.dispose()


_A = t.TypeVar("_A", bound="App")


def with_async_view(app: _A, scoped: async_scoped_session[AsyncSession]) -> _A:
    """*app* (Quart, or Flask with async views), with a view that adds a todo and commits."""
    scoped.init_app(app)

    @app.post("/<title>")
    async def add(title: str) -> dict[str, int | None]:
        current_session.add(Todo(title=title))
        await current_session.commit()
        return {"count": await current_session.scalar(COUNT)}

    return app


def quart_app(scoped: async_scoped_session[AsyncSession]) -> Quart:
    """A Quart app whose view adds a todo and commits."""
    return with_async_view(Quart(__name__), scoped)


async def count_async(engine: AsyncEngine) -> int:
    async with AsyncSession(engine) as session:
        return await session.scalar(COUNT) or 0


@needs_quart
async def test_quart_commits_are_rolled_back(async_engine: AsyncEngine) -> None:
    """Awaited: a Quart view's commit and the test's own are gone after ``aisolate``."""
    app = quart_app(async_scoped_session(async_sessionmaker(async_engine)))
    async with aisolate(app) as db:
        response = await app.test_client().post("/a")
        assert await response.get_json() == {"count": 1}
        session = db.async_session()
        session.add(Todo(title="b"))
        await session.commit()
        assert await session.scalar(COUNT) == 2
    assert await count_async(async_engine) == 0
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@needs_quart
@pytest.mark.parametrize("backend", ["aiosqlite", "asyncpg"])
def test_quart_engine_survives_a_new_loop_per_test(backend: str, tmp_path: Path) -> None:
    """One module-level engine, a new event loop per test: no connection crosses loops."""
    url = database_url(backend, tmp_path)
    setup = create_engine(url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg"))
    Base.metadata.create_all(setup)
    engine = create_async_engine(url)
    app = quart_app(async_scoped_session(async_sessionmaker(engine)))

    async def one_test() -> None:
        async with aisolate(app):
            for expected in (1, 2):
                response = await app.test_client().post("/x")
                assert await response.get_json() == {"count": expected}

    try:
        for _ in range(3):
            asyncio.run(one_test())
        assert count_sync(setup) == 0
    finally:
        asyncio.run(engine.dispose())
        Base.metadata.drop_all(setup)
        setup.dispose()


@pytest.mark.parametrize("backend", ["aiosqlite", "asyncpg"])
def test_flask_async_views_on_the_shared_loop(backend: str, tmp_path: Path) -> None:
    """Flask async views: the test's connection opens on the shared loop the views use."""
    url = database_url(backend, tmp_path)
    with engine_on_shared_loop(url) as engine:
        app = with_async_view(Flask(__name__), async_scoped_session(async_sessionmaker(engine)))
        with isolate(app) as db:
            assert app.test_client().post("/a").json == {"count": 1}
            assert app.test_client().post("/b").json == {"count": 2}
            assert db.run(db.async_session().scalar(COUNT)) == 2
        assert db.run(count_async(engine)) == 0
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@needs_quart
def test_misuse_is_explained(sync_engine: Engine, async_engine: AsyncEngine) -> None:
    """Each wrong use says what to do instead."""
    with (
        pytest.raises(RuntimeError, match="No scoped session is initialised"),
        isolate(Flask(__name__)),
    ):
        pass
    quart = quart_app(async_scoped_session(async_sessionmaker(async_engine)))
    with pytest.raises(TypeError, match="aisolate"), isolate(quart):
        pass
    plain = Flask(__name__)
    flask_scoped_session(lambda: Session(sync_engine), plain)
    with pytest.raises(TypeError, match="not a sessionmaker"), isolate(plain):
        pass
    app = flask_app(flask_scoped_session(sessionmaker(sync_engine)))
    with isolate(app) as db:
        with pytest.raises(RuntimeError, match="already isolated"), isolate(app):
            pass
        with pytest.raises(RuntimeError, match="no async_scoped_session"):
            db.async_session()
    assert sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@needs_quart
async def test_run_is_refused_for_quart(async_engine: AsyncEngine) -> None:
    """``Isolation.run`` is for Flask; a Quart test awaits on its own loop."""
    app = quart_app(async_scoped_session(async_sessionmaker(async_engine)))
    async with aisolate(app) as db:
        with pytest.raises(RuntimeError, match="await the coroutine"):
            db.run(count_async(async_engine))


def test_failing_open_closes_what_was_opened(sync_engine: Engine) -> None:
    """When one engine cannot connect, the connections already opened are returned."""
    app = flask_app(flask_scoped_session(sessionmaker(sync_engine)))
    unreachable = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    flask_scoped_session(sessionmaker(unreachable), app, name="down")
    try:
        with pytest.raises(OperationalError), isolate(app):
            pass  # pragma: no cover - never entered
        assert sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert app.test_client().post("/a").json == {"count": 1}  # own factories are back
        assert count_sync(sync_engine) == 1
    finally:
        unreachable.dispose()


@pytest.mark.parametrize("sync_backend", ["postgresql"])
async def test_aisolate_on_a_flask_app(sync_engine: Engine, tmp_path: Path) -> None:
    """``async with aisolate(app)`` on a Flask app isolates like ``isolate(app)``: what its
    async views (on the shared loop) and sync views commit is rolled back afterwards."""
    with engine_on_shared_loop(database_url("asyncpg", tmp_path)) as engine:
        app = with_async_view(Flask(__name__), async_scoped_session(async_sessionmaker(engine)))
        sync_scoped = flask_scoped_session(sessionmaker(sync_engine), app)

        @app.post("/sync/<title>")
        def add_sync(title: str) -> dict[str, int | None]:
            sync_scoped.add(Todo(title=title))
            sync_scoped.commit()
            return {"count": sync_scoped.scalar(COUNT)}

        client = app.test_client()
        async with aisolate(app) as db:
            assert client.post("/a").json == {"count": 1}
            assert client.post("/b").json == {"count": 2}
            assert client.post("/sync/c").json == {"count": 1}
            assert db.run(db.async_session().scalar(COUNT)) == 2
            assert db.session().scalar(COUNT) == 1
        assert runner.run(count_async(engine)) == 0
        assert count_sync(sync_engine) == 0
        assert client.post("/d").json == {"count": 1}  # the app's own factories are back


@pytest.mark.parametrize("sync_backend", ["sqlite"])
def test_flask_app_without_shared_loop_cannot_be_isolated(
    sync_engine: Engine, tmp_path: Path
) -> None:
    """A Flask app whose async views opted out of the shared loop has no one event loop to
    open the test's async connections on: ``isolate()`` refuses before opening anything, says
    to keep ``shared_loop=True``, and leaves the app as it was (asking again gives the same
    answer, not "already isolated")."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'opted_out.db'}")
    app = flask_app(flask_scoped_session(sessionmaker(sync_engine)))
    async_scoped_session(async_sessionmaker(engine), app, shared_loop=False)
    try:
        for _ in range(2):
            with pytest.raises(RuntimeError, match="shared_loop=False") as raised, isolate(app):
                pass
            assert "Keep the default shared_loop=True" in str(raised.value)
        assert sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert app.test_client().post("/a").json == {"count": 1}  # not isolated: committed
        assert count_sync(sync_engine) == 1
    finally:
        engine.sync_engine.dispose()  # never connected: nothing on any loop to close


async def kill_backends(connections: list[Connection | AsyncConnection]) -> None:
    """Have PostgreSQL terminate the backends of *connections* (and wait until they are gone)."""
    pids = [
        await t.cast(AsyncConnection, c).scalar(text("select pg_backend_pid()"))
        for c in connections
    ]
    with connect_admin(autocommit=True) as admin:
        for pid in pids:
            assert admin.execute("select pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (
                True,
            )


@needs_quart
@pytest.mark.parametrize("async_backend", ["asyncpg"])
@pytest.mark.parametrize("block_fails", [False, True], ids=["block_passes", "block_fails"])
async def test_connections_lost_before_the_end(
    async_engine: AsyncEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture, block_fails: bool
) -> None:
    """Awaited, on Quart with asyncpg: the server kills both of the test's connections (two
    engines) before the isolation ends, so both async rollbacks fail. Every step still runs
    (each connection is returned, the app's own factories are back); with the block passing,
    both failures come out together in one ExceptionGroup; with the block failing, its own
    error comes out and both failures are logged."""
    archive_engine = create_async_engine(database_url("asyncpg", tmp_path))
    app = quart_app(async_scoped_session(async_sessionmaker(async_engine)))
    async_scoped_session(async_sessionmaker(archive_engine), app, name="archive")
    failures: list[BaseException] = []
    try:
        with caplog.at_level(logging.ERROR, logger="async_scoped_session_ext"):
            if block_fails:
                with pytest.raises(KeyError, match="the test's own error"):
                    async with aisolate(app) as db:
                        await kill_backends(db.connections)
                        raise KeyError("the test's own error")
                failures = [r.exc_info[1] for r in caplog.records if r.exc_info and r.exc_info[1]]
            else:
                with pytest.raises(ExceptionGroup, match="Ending a test's isolation") as raised:
                    async with aisolate(app) as db:
                        response = await app.test_client().post("/a")
                        assert await response.get_json() == {"count": 1}
                        await kill_backends(db.connections)
                failures = list(raised.value.exceptions)
        assert len(failures) == 2
        for failure in failures:
            assert isinstance(failure, DBAPIError) and failure.connection_invalidated
        for engine in (async_engine, archive_engine):
            assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        response = await app.test_client().post("/b")  # own factories: the killed work is gone
        assert await response.get_json() == {"count": 1}
    finally:
        await archive_engine.dispose()
