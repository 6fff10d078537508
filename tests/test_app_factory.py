"""App factories: engines made from ``app.config`` on first use (``_app.py``).

Sync Flask, Flask async and Quart factories; config changed after ``init_app``; two apps
in one process, each with its own engines; named engines and ``current_session``; a given
sessionmaker beside config-made ones; the session types made without a factory.
The factories and their scoped sessions are in ``tests/support/config_apps.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session
from async_scoped_session_ext._runner import runner

from .support import config_apps
from .support.config_apps import (
    GOOD_ASYNC_CONFIG,
    GOOD_SYNC_CONFIG,
    asession,
    count_query,
    create_app,
    create_async_app,
    create_quart_app,
    quart_asession,
    second_url,
    session,
)
from .support.engines import disposing, engines_of, fresh_tables
from .support.environment import needs_quart
from .support.models import Base, Todo

# Fixtures: imported into the module, pytest finds them.
sync_url = config_apps.sync_url
async_url = config_apps.async_url

# -- app factories and lazy creation ------------------------------------------------------


def test_sync_app_factory(sync_url: str) -> None:
    """No engine until first use; then the configured one, with the session options."""
    with disposing(create_app({"SQLALCHEMY_ENGINES": {"default": sync_url}})) as app:
        assert engines_of(app) == [], "the engine was made before it was used"
        client = app.test_client()
        assert client.post("/todos/one").json == {"title": "one", "expired": False}
        assert client.get("/todos").json == ["one"]
        (engine,) = engines_of(app)
        assert isinstance(engine, Engine)
        assert engine.url.render_as_string(hide_password=False) == sync_url
        with app.app_context():
            assert current_session._get_current_object() is session
            assert current_session().bind is engine
            assert current_session().expire_on_commit is False
        assert len(session.registry) == 0


def test_flask_async_app_factory(async_url: str) -> None:
    """Flask async views: the async engine is made on first use, on the shared loop."""
    with disposing(create_async_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": async_url}})) as app:
        assert engines_of(app) == []
        client = app.test_client()
        assert client.post("/todos/one").json == {"title": "one", "expired": False}
        assert client.get("/todos").json == ["one"]
        (engine,) = engines_of(app)
        assert isinstance(engine, AsyncEngine)
        assert engine.url.render_as_string(hide_password=False) == async_url
        assert len(asession.registry) == 0


@needs_quart
async def test_quart_app_factory(async_url: str) -> None:
    """Quart: the engine is made on first use and disposed when serving stops."""
    app = create_quart_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": async_url}})
    async with app.test_app() as test_app:
        assert engines_of(app) == []
        client = test_app.test_client()
        response = await client.post("/todos/one")
        assert await response.get_json() == {"title": "one", "expired": False}
        assert await (await client.get("/todos")).get_json() == ["one"]
        (engine,) = engines_of(app)
        assert isinstance(engine, AsyncEngine)
        assert engine.url.render_as_string(hide_password=False) == async_url
    assert engines_of(app) == []
    assert len(quart_asession.registry) == 0


def test_config_changed_after_init_app(sync_url: str, tmp_path: Path) -> None:
    """The config is read at first use: a value set after init_app wins."""
    unused = tmp_path / "unused.db"
    app = create_app({"SQLALCHEMY_ENGINES": {"default": f"sqlite:///{unused}"}})
    app.config["SQLALCHEMY_ENGINES"] = {"default": {"url": sync_url, "logging_name": "late"}}
    with disposing(app):
        assert app.test_client().post("/todos/late").status_code == 200
        (engine,) = engines_of(app)
        assert engine.url.render_as_string(hide_password=False) == sync_url
        assert isinstance(engine, Engine) and engine.logging_name == "late"
    assert not unused.exists()


def test_config_changed_after_init_app_async(async_url: str, tmp_path: Path) -> None:
    """Flask async: the same, for SQLALCHEMY_ASYNC_ENGINES set after the factory returned."""
    app = create_async_app({})
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": {"url": async_url, "echo": False}}
    with disposing(app):
        assert app.test_client().get("/todos").json == []
        (engine,) = engines_of(app)
        assert engine.url.render_as_string(hide_password=False) == async_url


@needs_quart
async def test_config_changed_after_init_app_quart(async_url: str) -> None:
    """Quart: config set between the factory and serving is the one used."""
    app = create_quart_app({})
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": async_url}
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/todos")
        assert await response.get_json() == []
        (engine,) = engines_of(app)
        assert engine.url.render_as_string(hide_password=False) == async_url


# -- two apps in one process --------------------------------------------------------------


@pytest.mark.parametrize("second", ["sqlite", "postgresql"])
def test_two_apps_get_their_own_engines(second: str, tmp_path: Path) -> None:
    """Each app has its own engine and sessions: a write in one is not seen in the other."""
    with (
        fresh_tables(f"sqlite:///{tmp_path / 'first.db'}") as first_url,
        fresh_tables(second_url(second, tmp_path, is_async=False)) as other_url,
        disposing(create_app({"SQLALCHEMY_ENGINES": {"default": first_url}})) as first,
        disposing(create_app({"SQLALCHEMY_ENGINES": {"default": other_url}})) as other,
    ):
        assert first.test_client().post("/todos/first").status_code == 200
        assert first.test_client().get("/todos").json == ["first"]
        assert other.test_client().get("/todos").json == []
        assert other.test_client().post("/todos/other").status_code == 200
        assert first.test_client().get("/todos").json == ["first"]
        (first_engine,) = engines_of(first)
        (other_engine,) = engines_of(other)
        assert first_engine is not other_engine
        with first.app_context():
            first_session = session()
            with other.app_context():
                assert session() is not first_session
                assert session().bind is other_engine
            assert first_session.bind is first_engine


@pytest.mark.parametrize("second", ["sqlite", "postgresql"])
def test_two_flask_async_apps_get_their_own_engines(second: str, tmp_path: Path) -> None:
    """Flask async: two apps, two async engines, both on the shared loop."""
    with (
        fresh_tables(f"sqlite+aiosqlite:///{tmp_path / 'first.db'}") as first_url,
        fresh_tables(second_url(second, tmp_path, is_async=True)) as other_url,
        disposing(create_async_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": first_url}})) as first,
        disposing(create_async_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": other_url}})) as other,
    ):
        assert first.test_client().post("/todos/first").status_code == 200
        assert other.test_client().get("/todos").json == []
        assert other.test_client().post("/todos/other").status_code == 200
        assert first.test_client().get("/todos").json == ["first"]
        assert other.test_client().get("/todos").json == ["other"]
        assert engines_of(first)[0] is not engines_of(other)[0]


@needs_quart
@pytest.mark.parametrize("second", ["sqlite", "postgresql"])
async def test_two_quart_apps_get_their_own_engines(second: str, tmp_path: Path) -> None:
    """Quart: two apps served at once, each with its own engine."""
    with (
        fresh_tables(f"sqlite+aiosqlite:///{tmp_path / 'first.db'}") as first_url,
        fresh_tables(second_url(second, tmp_path, is_async=True)) as other_url,
    ):
        first = create_quart_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": first_url}})
        other = create_quart_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": other_url}})
        async with first.test_app() as first_app, other.test_app() as other_app:
            first_client, other_client = first_app.test_client(), other_app.test_client()
            assert (await first_client.post("/todos/first")).status_code == 200
            assert await (await other_client.get("/todos")).get_json() == []
            assert (await other_client.post("/todos/other")).status_code == 200
            assert await (await first_client.get("/todos")).get_json() == ["first"]
            assert engines_of(first)[0] is not engines_of(other)[0]


# -- names, options, and a given sessionmaker ---------------------------------------------


def test_named_engines_and_current_session(tmp_path: Path) -> None:
    """name="analytics" reads its own entry; current_session is the one initialised last."""
    analytics = flask_scoped_session(name="analytics")
    default = flask_scoped_session()
    with (
        fresh_tables(f"sqlite:///{tmp_path / 'main.db'}") as main_url,
        fresh_tables(f"sqlite:///{tmp_path / 'analytics.db'}") as analytics_url,
    ):
        app = Flask(__name__)
        app.config["SQLALCHEMY_ENGINES"] = {"default": main_url, "analytics": analytics_url}
        analytics.init_app(app)
        default.init_app(app)
        with disposing(app), app.app_context():
            assert current_session._get_current_object() is default
            default.add(Todo(title="main"))
            default.commit()
            assert analytics.scalar(count_query()) == 0
            analytics.add_all([Todo(title="a"), Todo(title="b")])
            analytics.commit()
            assert default.scalar(count_query()) == 1
            assert analytics.get_bind().engine.url.database == str(tmp_path / "analytics.db")
            assert len(engines_of(app)) == 2


def test_named_async_engine(tmp_path: Path) -> None:
    """async_scoped_session(name=...) reads SQLALCHEMY_ASYNC_ENGINES[name]."""
    reports = async_scoped_session(name="reports")
    with fresh_tables(f"sqlite+aiosqlite:///{tmp_path / 'reports.db'}") as reports_url:
        app = Flask(__name__)
        app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"reports": reports_url}
        reports.init_app(app)

        async def add_and_count() -> int:
            reports.add(Todo(title="report"))
            await reports.commit()
            return int(await reports.scalar(count_query()))

        with disposing(app), app.app_context():
            assert reports.run(add_and_count()) == 1
        assert len(reports.registry) == 0


def test_given_sessionmaker_beside_config(sync_url: str, tmp_path: Path) -> None:
    """A scoped session with its own sessionmaker still works next to config-made ones."""
    own_engine = create_engine(f"sqlite:///{tmp_path / 'own.db'}")
    Base.metadata.create_all(own_engine)
    given = flask_scoped_session(sessionmaker(bind=own_engine))
    from_config = flask_scoped_session(name="analytics", session_options={"autoflush": False})
    given_async = async_scoped_session(
        async_sessionmaker(bind=create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'own.db'}"))
    )
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"analytics": sync_url}
    given.init_app(app)
    from_config.init_app(app)
    given_async.init_app(app)

    async def count_async() -> int:
        return int(await given_async.scalar(count_query()))

    try:
        with disposing(app), app.app_context():
            given.add(Todo(title="own"))
            given.commit()
            assert given().bind is own_engine
            assert from_config().autoflush is False
            assert from_config.scalar(count_query()) == 0
            assert given_async.run(count_async()) == 1
            assert [e.url.render_as_string(hide_password=False) for e in engines_of(app)] == [
                sync_url
            ]
    finally:
        own_engine.dispose()
        runner.run(given_async.session_factory.kw["bind"].dispose())


# -- session types ------------------------------------------------------------------------


def test_session_types() -> None:
    """Without a factory, the sessions are plain Session / AsyncSession objects."""
    app = create_app(GOOD_SYNC_CONFIG)
    async_app = create_async_app(GOOD_ASYNC_CONFIG)

    async def make() -> AsyncSession:
        return asession()

    with disposing(app), disposing(async_app):
        with app.app_context():
            assert isinstance(session(), Session)
        with async_app.app_context():
            assert isinstance(asession.run(make()), AsyncSession)
