"""``get_engine()``: the engine a scoped session uses in an app, typed by its kind.

Inside and outside requests, for engines made from the config and for given factories;
the async one runs a query (on asyncpg too); errors for what has no single engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import async_scoped_session, flask_scoped_session
from async_scoped_session_ext._runner import runner
from async_scoped_session_ext.testing import isolate

from .support.databases import database_url
from .support.engines import disposing, engines_of
from .support.environment import needs_quart


def test_config_engine_inside_and_outside_contexts(sync_backend: str, tmp_path: Path) -> None:
    """The config-made engine, made on first use, is the one the sessions use, anywhere."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": database_url(sync_backend, tmp_path)}
    scoped = flask_scoped_session(app=app)
    with disposing(app):
        engine = scoped.get_engine(app)  # outside any context: made now
        assert type(engine) is Engine and engines_of(app) == [engine]
        with app.app_context():
            assert scoped.get_engine() is engine
            assert scoped.get_bind() is engine
        with app.test_request_context():
            assert scoped.get_engine() is engine
            assert scoped.execute(text("select 1")).scalar() == 1
        with isolate(app), app.app_context():  # a test's override: still the app's engine
            assert scoped.get_engine() is engine


def test_async_config_engine_runs_a_query(async_backend: str, tmp_path: Path) -> None:
    """The async scoped session's engine is an AsyncEngine that runs queries (asyncpg too)."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"db": database_url(async_backend, tmp_path)}
    scoped = async_scoped_session(app=app, name="db")

    async def query(engine: AsyncEngine) -> int:
        async with engine.connect() as connection:
            return int((await connection.execute(text("select 41 + 1"))).scalar_one())

    with disposing(app):
        engine = scoped.get_engine(app)
        assert type(engine) is AsyncEngine and engines_of(app) == [engine]
        with app.test_request_context():
            assert scoped.get_engine() is engine
        assert runner.run(query(engine)) == 42


def test_given_factories(tmp_path: Path) -> None:
    """A given factory's bind is returned, sync and async, in a context or for an app."""
    app = Flask(__name__)
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    aengine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    scoped = flask_scoped_session(sessionmaker(bind=engine), app)
    ascoped = async_scoped_session(async_sessionmaker(aengine), app)
    try:
        assert scoped.get_engine(app) is engine
        assert ascoped.get_engine(app) is aengine
        with app.app_context():
            assert scoped.get_engine() is engine and ascoped.get_engine() is aengine
    finally:
        engine.dispose()
        runner.run(aengine.dispose())


def test_errors(tmp_path: Path) -> None:
    """No app, another app, binds only, a plain callable: each error says what to do."""
    app, other = Flask(__name__), Flask("other")
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    scoped = flask_scoped_session(sessionmaker(bind=engine), app)
    with pytest.raises(RuntimeError, match=r"outside of an application context.*get_engine\(app\)"):
        scoped.get_engine()
    with pytest.raises(RuntimeError, match="not initialised on the current app"):
        scoped.get_engine(other)
    binds_only = flask_scoped_session(sessionmaker(binds={Session: engine}), app, name="b")
    with pytest.raises(RuntimeError, match="has only 'binds'.*bind=engine"):
        binds_only.get_engine(app)
    no_bind = flask_scoped_session(sessionmaker(), app, name="n")
    with pytest.raises(RuntimeError, match="has no 'bind'"):
        no_bind.get_engine(app)
    plain = flask_scoped_session(lambda: Session(engine), app, name="p")
    with pytest.raises(TypeError, match="not a sessionmaker"):
        plain.get_engine(app)
    engine.dispose()


@needs_quart
async def test_quart_request_engine(async_backend: str, tmp_path: Path) -> None:
    """In a Quart request, the config-made AsyncEngine runs a query on the request's loop."""
    from quart import Quart

    app = Quart(__name__)
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": database_url(async_backend, tmp_path)}
    scoped = async_scoped_session(app=app)
    engine = scoped.get_engine(app)
    try:
        async with app.test_request_context("/"):
            assert scoped.get_engine() is engine
            async with engine.connect() as connection:
                assert (await connection.execute(text("select 2"))).scalar_one() == 2
    finally:
        await engine.dispose()
