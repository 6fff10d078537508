"""``shared_loop`` is one app-wide setting of a Flask app, set once, on PostgreSQL.

It decides which event loop runs every async view, so two async scoped sessions (or an
async ``EngineRegistry``) of one app cannot disagree about it, and every check that depends
on it (a sync session on the shared loop, ``testing.isolate``) sees the same value.
"""

from __future__ import annotations

import collections.abc as cabc
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import EngineRegistry, async_scoped_session, flask_scoped_session
from async_scoped_session_ext.testing import isolate

from .support.databases import database_url, engine_on_shared_loop
from .support.models import Todo

COUNT = select(func.count(Todo.id))


@pytest.fixture
def engine(tmp_path: Path) -> cabc.Iterator[AsyncEngine]:
    """A pooled asyncpg engine with fresh tables, its connections on the shared loop."""
    with engine_on_shared_loop(database_url("asyncpg", tmp_path)) as engine:
        yield engine


def flask_app() -> Flask:
    app = Flask(__name__)
    app.testing = True  # a view's exception propagates to the test
    return app


@pytest.mark.parametrize("first", [True, False])
def test_conflicting_values_are_refused(engine: AsyncEngine, first: bool) -> None:
    """A second async scoped session asking for the other ``shared_loop`` value raises,
    naming both values; the first one's setting stays in force."""
    app = flask_app()
    scoped = async_scoped_session(async_sessionmaker(engine), app, shared_loop=first)
    other = async_scoped_session(async_sessionmaker(engine), name="other", shared_loop=not first)
    with pytest.raises(RuntimeError, match="app-wide") as info:
        other.init_app(app)
    message = str(info.value)
    assert f"shared_loop={first}" in message and f"shared_loop={not first}" in message

    @app.get("/")
    async def view() -> str:
        return str(await scoped.scalar(text("select 1")))

    if first:
        assert [app.test_client().get("/").text for _ in range(3)] == ["1"] * 3
    else:  # still opted out: the scoped session explains why it cannot work
        with pytest.raises(RuntimeError, match="shared_loop=False"):
            app.test_client().get("/")


def test_same_value_on_two_sessions(engine: AsyncEngine) -> None:
    """Two async scoped sessions with the same ``shared_loop`` value both work."""
    app = flask_app()
    first = async_scoped_session(async_sessionmaker(engine), app, shared_loop=True)
    second = async_scoped_session(async_sessionmaker(engine), app, name="b", shared_loop=True)

    @app.post("/<title>")
    async def add(title: str) -> str:
        first.add(Todo(title=title))
        await first.commit()
        second.add(Todo(title=title))
        await second.commit()
        return str(await second.scalar(COUNT))

    client = app.test_client()
    assert [client.post(f"/{title}").text for title in "abc"] == ["2", "4", "6"]
    opted_out = flask_app()
    async_scoped_session(async_sessionmaker(engine), opted_out, shared_loop=False)
    async_scoped_session(async_sessionmaker(engine), opted_out, name="b", shared_loop=False)
    assert opted_out.async_to_sync.__func__ is Flask.async_to_sync  # type: ignore[attr-defined]


@pytest.mark.parametrize("registry_first", [False, True])
def test_async_registry_on_an_opted_out_app_is_refused(
    engine: AsyncEngine, registry_first: bool
) -> None:
    """An async ``EngineRegistry`` needs the shared loop: on an app whose async sessions say
    ``shared_loop=False`` it raises, whichever is initialised first."""
    app = flask_app()
    registry = EngineRegistry(is_async=True)
    opted_out = async_scoped_session(async_sessionmaker(engine), shared_loop=False)
    first, second = (registry, opted_out) if registry_first else (opted_out, registry)
    first.init_app(app)
    with pytest.raises(RuntimeError, match="app-wide"):
        second.init_app(app)
    sync_registry = EngineRegistry()  # a sync registry has no say in the matter
    sync_registry.init_app(app)
    registry.close()
    sync_registry.close()


@pytest.mark.parametrize("sync_backend", ["postgresql"])
@pytest.mark.parametrize("set_by", ["async_scoped_session", "EngineRegistry"])
def test_sync_session_on_the_shared_loop_is_refused(
    engine: AsyncEngine, sync_engine: Engine, set_by: str
) -> None:
    """On a Flask app running on the shared loop, a sync session in an async view raises
    the sync-in-async TypeError; in a sync view it works."""
    app = flask_app()
    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    registry = EngineRegistry(is_async=True)
    if set_by == "EngineRegistry":
        registry.init_app(app)
    else:
        async_scoped_session(async_sessionmaker(engine), app)

    @app.get("/async")
    async def async_view() -> str:
        return str(scoped.scalar(text("select 1")))

    @app.get("/sync")
    def sync_view() -> str:
        return str(scoped.scalar(text("select 1")))

    client = app.test_client()
    with pytest.raises(TypeError, match="would block that loop"):
        client.get("/async")
    assert client.get("/sync").text == "1"
    registry.close()


def test_isolate_an_app_with_two_async_sessions(engine: AsyncEngine) -> None:
    """``isolate(app)`` takes an app with two async scoped sessions on the default setting;
    what their views commit is rolled back afterwards."""
    app = flask_app()
    first = async_scoped_session(async_sessionmaker(engine), app)
    second = async_scoped_session(async_sessionmaker(engine), app, name="other")

    @app.post("/<title>")
    async def add(title: str) -> str:
        for scoped in (first, second):
            scoped.add(Todo(title=title))
            await scoped.commit()
        return str(await first.scalar(COUNT))

    with isolate(app) as db:
        assert app.test_client().post("/a").text == "2"
        assert app.test_client().post("/b").text == "4"
        assert db.run(db.async_session().scalar(COUNT)) == 4

    async def count() -> int | None:
        async with AsyncSession(engine) as session:
            return await session.scalar(COUNT)

    assert db.run(count()) == 0
