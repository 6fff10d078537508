"""Engines made from ``app.config``: app factories, late config, two apps, names and errors.

The scoped sessions are created at module level without a session factory, as in an app
factory project; ``create_*_app(config)`` initialises them on each new app. The engines
come from ``SQLALCHEMY_ENGINES`` / ``SQLALCHEMY_ASYNC_ENGINES`` on first use.
"""

from __future__ import annotations

import collections.abc as cabc
import importlib.util
import traceback
import typing as t
from pathlib import Path

import click
import pytest
from flask import Flask
from flask.cli import shell_command
from sqlalchemy import Engine, create_engine, func, inspect, select, text
from sqlalchemy.exc import ArgumentError, InvalidRequestError, SADeprecationWarning
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session
from async_scoped_session_ext._engines import create_configured_engine
from async_scoped_session_ext._runner import runner

from .support.databases import database_url, postgres_url, require_postgres
from .support.engines import checked_out, disposing, engines_of, fresh_tables
from .support.environment import HAS_QUART, needs_quart
from .support.models import Base, Todo

if t.TYPE_CHECKING:
    from flask.sansio.app import App  # new in Flask 3.0
if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

Config = cabc.Mapping[str, t.Any]
AppT = t.TypeVar("AppT", bound="App")

# expire_on_commit=False: a committed object stays readable without a new query.
session = flask_scoped_session(session_options={"expire_on_commit": False})
asession = async_scoped_session(session_options={"expire_on_commit": False})
quart_session = flask_scoped_session()
quart_asession = async_scoped_session(session_options={"expire_on_commit": False})


def count_query() -> t.Any:
    return select(func.count()).select_from(Todo)


def create_app(config: Config) -> Flask:
    """A sync Flask app factory."""
    app = Flask(__name__)
    app.config.from_mapping(TESTING=True)
    app.config.from_mapping(config)
    session.init_app(app)

    @app.post("/todos/<title>")
    def add(title: str) -> dict[str, object]:
        todo = Todo(title=title)
        current_session.add(todo)
        current_session.commit()
        # expire_on_commit=False: the attributes are still loaded after the commit.
        return {"title": todo.title, "expired": inspect(todo).expired}

    @app.get("/todos")
    def list_todos() -> list[str]:
        return [todo.title for todo in current_session.scalars(select(Todo).order_by(Todo.id))]

    @app.cli.command("add")
    @click.argument("title")
    def add_command(title: str) -> None:
        current_session.add(Todo(title=title))
        current_session.commit()
        click.echo(f"{current_session.scalar(count_query())} todos")

    return app


async def add_todo(title: str) -> int:
    """Add a todo with the current (async) session, commit, and count the todos."""
    current_session.add(Todo(title=title))
    await current_session.commit()
    return int(await current_session.scalar(count_query()))


async def list_titles() -> list[str]:
    return [todo.title for todo in await current_session.scalars(select(Todo).order_by(Todo.id))]


def create_async_app(config: Config) -> Flask:
    """A Flask app factory with async views."""
    app = Flask(__name__)
    app.config.from_mapping(TESTING=True)
    app.config.from_mapping(config)
    asession.init_app(app)

    @app.post("/todos/<title>")
    async def add(title: str) -> dict[str, object]:
        todo = Todo(title=title)
        current_session.add(todo)
        await current_session.commit()
        # Expired attributes would need a lazy load, which cannot happen here.
        return {"title": todo.title, "expired": inspect(todo).expired}

    @app.get("/todos")
    async def list_todos() -> list[str]:
        return await list_titles()

    @app.cli.command("add")
    @click.argument("title")
    def add_command(title: str) -> None:
        click.echo(f"{asession.run(add_todo(title))} todos")

    return app


def create_quart_app(config: Config) -> Quart:
    """A Quart app factory with an async and a sync scoped session."""
    app = Quart(__name__)
    app.config.from_mapping(TESTING=True)
    app.config.from_mapping(config)
    quart_asession.init_app(app)
    quart_session.init_app(app)

    @app.post("/todos/<title>")
    async def add(title: str) -> dict[str, object]:
        todo = Todo(title=title)
        quart_asession.add(todo)
        await quart_asession.commit()
        return {"title": todo.title, "expired": inspect(todo).expired}

    @app.get("/todos")
    async def list_todos() -> list[str]:
        return await list_titles()

    @app.cli.command("add-sync", with_appcontext=True)
    @click.argument("title")
    def add_sync(title: str) -> None:
        # In a Quart command an event loop runs (Quart's own asyncio.run), so with both
        # kinds initialised current_session is the async one: use the sync object itself.
        quart_session.add(Todo(title=title))
        quart_session.commit()
        click.echo(f"{quart_session.scalar(count_query())} todos")

    @app.cli.command("add-async", with_appcontext=True)
    @click.argument("title")
    def add_async(title: str) -> None:
        click.echo(f"{quart_asession.run(add_todo(title))} todos")

    return app


@pytest.fixture
def sync_url(sync_backend: str, tmp_path: Path) -> cabc.Iterator[str]:
    """A sync URL (pysqlite file or psycopg) of a database with fresh tables."""
    with fresh_tables(database_url(sync_backend, tmp_path)) as url:
        yield url


@pytest.fixture
def async_url(async_backend: str, tmp_path: Path) -> cabc.Iterator[str]:
    """An async URL (aiosqlite file or asyncpg) of a database with fresh tables."""
    with fresh_tables(database_url(async_backend, tmp_path)) as url:
        yield url


def second_url(backend: str, tmp_path: Path, is_async: bool) -> str:
    """Another database: a second SQLite file, or PostgreSQL."""
    if backend == "sqlite":
        driver = "+aiosqlite" if is_async else ""
        return f"sqlite{driver}:///{tmp_path / 'second.db'}"
    require_postgres()
    return postgres_url("asyncpg" if is_async else "psycopg")


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


# -- config errors --------------------------------------------------------------------------

SYNC_ERRORS: list[tuple[Config, type[Exception], str]] = [
    ({}, RuntimeError, r"'SQLALCHEMY_ENGINES\['default'\]' is not defined"),
    (
        {"SQLALCHEMY_ENGINES": {"analytics": "sqlite://"}},
        RuntimeError,
        r"'SQLALCHEMY_ENGINES\['default'\]' is not defined",
    ),
    (
        {"SQLALCHEMY_ENGINES": {"default": {"echo": True}}},
        RuntimeError,
        r"'SQLALCHEMY_ENGINES\['default'\]' has no 'url' key",
    ),
    (
        {"SQLALCHEMY_ENGINES": {"default": "sqlite+aiosqlite:///async.db"}},
        TypeError,
        r"'SQLALCHEMY_ENGINES\['default'\]' names an async driver.*SQLALCHEMY_ASYNC_ENGINES",
    ),
    (
        {"SQLALCHEMY_ENGINES": {"default": "postgresql+asyncpg://user@127.0.0.1/db"}},
        TypeError,
        r"'SQLALCHEMY_ENGINES\['default'\]' names an async driver",
    ),
    (
        {"SQLALCHEMY_ENGINES": {"default": "not a url"}},
        RuntimeError,
        r"'SQLALCHEMY_ENGINES\['default'\]' is not a valid database URL",
    ),
    (
        {"SQLALCHEMY_ENGINES": {"default": "postgresql+psycopg://user@localhost:port/db"}},
        RuntimeError,
        r"'SQLALCHEMY_ENGINES\['default'\]' is not a valid database URL\. .*the port a number",
    ),
    (
        {"SQLALCHEMY_ENGINES": {"default": {"url": None}}},
        RuntimeError,
        r"'SQLALCHEMY_ENGINES\['default'\]' is not a valid database URL \(it is a NoneType\)",
    ),
    (
        {"SQLALCHEMY_ENGINES": {"default": "postgresql+nodriver://user@localhost/db"}},
        RuntimeError,
        r"'SQLALCHEMY_ENGINES\['default'\]' names the database driver 'postgresql\+nodriver',"
        r" which SQLAlchemy cannot load",
    ),
    (
        {"SQLALCHEMY_ENGINES": {"default": {"url": "sqlite:///unused.db", "pool_size": "many"}}},
        TypeError,
        r"'SQLALCHEMY_ENGINES\['default'\]' has engine options that create_engine\(\) rejects:"
        r" .*\(the options given: \['pool_size'\]\)",
    ),
    (
        {"SQLALCHEMY_ENGINES": {"default": {"url": "sqlite://", "pool_sise": 5}}},
        TypeError,
        r"'SQLALCHEMY_ENGINES\['default'\]' has engine options that create_engine\(\) rejects:"
        r" Invalid argument\(s\) 'pool_sise'",
    ),
]

ASYNC_ERRORS: list[tuple[Config, type[Exception], str]] = [
    ({}, RuntimeError, r"'SQLALCHEMY_ASYNC_ENGINES\['default'\]' is not defined"),
    (
        {"SQLALCHEMY_ENGINES": {"default": "sqlite+aiosqlite://"}},
        RuntimeError,
        r"'SQLALCHEMY_ASYNC_ENGINES\['default'\]' is not defined",
    ),
    (
        {"SQLALCHEMY_ASYNC_ENGINES": {"default": {"URL": "sqlite+aiosqlite://"}}},
        RuntimeError,
        r"'SQLALCHEMY_ASYNC_ENGINES\['default'\]' has no 'url' key",
    ),
    (
        {"SQLALCHEMY_ASYNC_ENGINES": {"default": "sqlite:///sync.db"}},
        TypeError,
        r"'SQLALCHEMY_ASYNC_ENGINES\['default'\]' names a sync driver",
    ),
    (  # psycopg2 has no async dialect (and is not even installed here)
        {"SQLALCHEMY_ASYNC_ENGINES": {"default": "postgresql+psycopg2://user@localhost/db"}},
        TypeError,
        r"'SQLALCHEMY_ASYNC_ENGINES\['default'\]' names a sync driver",
    ),
    (
        {"SQLALCHEMY_ASYNC_ENGINES": {"default": "not a url"}},
        RuntimeError,
        r"'SQLALCHEMY_ASYNC_ENGINES\['default'\]' is not a valid database URL",
    ),
    (
        {"SQLALCHEMY_ASYNC_ENGINES": {"default": {"url": "sqlite+aiosqlite://", "pool_size": "x"}}},
        TypeError,
        r"'SQLALCHEMY_ASYNC_ENGINES\['default'\]' has engine options that"
        r" create_async_engine\(\) rejects: .*\(the options given: \['pool_size'\]\)",
    ),
    (
        {"SQLALCHEMY_ASYNC_ENGINES": {"default": {"url": "sqlite+aiosqlite://", "pool_sise": 5}}},
        TypeError,
        r"'SQLALCHEMY_ASYNC_ENGINES\['default'\]' has engine options that"
        r" create_async_engine\(\) rejects: Invalid argument\(s\) 'pool_sise'",
    ),
    (
        {
            "SQLALCHEMY_ASYNC_ENGINES": {
                "default": {"url": "sqlite+aiosqlite://", "server_side_cursors": True}
            }
        },
        InvalidRequestError,
        r"'SQLALCHEMY_ASYNC_ENGINES\['default'\]' has engine options that"
        r" create_async_engine\(\) rejects: Can't set server_side_cursors",
    ),
]

GOOD_SYNC_CONFIG = {"SQLALCHEMY_ENGINES": {"default": "sqlite://"}}
GOOD_ASYNC_CONFIG = {"SQLALCHEMY_ASYNC_ENGINES": {"default": "sqlite+aiosqlite://"}}


@pytest.mark.parametrize(("config", "error", "message"), SYNC_ERRORS)
def test_sync_config_errors(config: Config, error: type[Exception], message: str) -> None:
    """Each config mistake raises at first use, naming the key; fixing the config works."""
    app = create_app(config)
    with disposing(app):
        with app.app_context(), pytest.raises(error, match=message):
            current_session.execute(text("select 1"))
        assert engines_of(app) == []
        app.config.update(GOOD_SYNC_CONFIG)
        with app.app_context():
            assert current_session.execute(text("select 1")).scalar_one() == 1
    assert len(session.registry) == 0


@pytest.mark.parametrize(("config", "error", "message"), ASYNC_ERRORS)
def test_flask_async_config_errors(config: Config, error: type[Exception], message: str) -> None:
    """Flask async: the same errors, raised from the shared loop through run()."""

    async def select_one() -> int:
        return int((await current_session.execute(text("select 1"))).scalar_one())

    app = create_async_app(config)
    with disposing(app):
        with app.app_context(), pytest.raises(error, match=message):
            asession.run(select_one())
        app.config.update(GOOD_ASYNC_CONFIG)
        with app.app_context():
            assert asession.run(select_one()) == 1
    assert len(asession.registry) == 0


@needs_quart
@pytest.mark.parametrize(("config", "error", "message"), ASYNC_ERRORS)
async def test_quart_config_errors(config: Config, error: type[Exception], message: str) -> None:
    """Quart: the same errors, in an app context while serving."""
    app = create_quart_app(config)
    async with app.test_app():
        async with app.app_context():
            with pytest.raises(error, match=message):
                await current_session.execute(text("select 1"))
        app.config.update(GOOD_ASYNC_CONFIG)
        async with app.app_context():
            assert (await current_session.execute(text("select 1"))).scalar_one() == 1
    assert len(quart_asession.registry) == 0


def test_server_side_cursors_on_a_driver_without_them() -> None:
    """server_side_cursors=True on pysqlite is reported as that option, naming the key."""
    options = {"url": "sqlite:///unused.db", "server_side_cursors": True}
    app = create_app({"SQLALCHEMY_ENGINES": {"default": options}})
    message = (
        r"'SQLALCHEMY_ENGINES\['default'\]' has engine options that create_engine\(\) rejects:"
        r" .* does not support server side cursors \(the options given: \['server_side_cursors'\]\)"
    )
    with disposing(app), app.app_context():
        with (
            pytest.warns(SADeprecationWarning, match="server_side_cursors"),
            pytest.raises(ArgumentError, match=message),
        ):
            current_session.execute(text("select 1"))
        assert engines_of(app) == []


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://user:s3cret@localhost:port/db",  # the port is not a number
        "postgresql+psycopg:://user:s3cret@localhost/db",  # a colon too many
    ],
)
def test_invalid_url_never_shows_its_password(url: str) -> None:
    """An unparsable URL is reported without its password, in the message or the traceback."""
    app = create_app({"SQLALCHEMY_ENGINES": {"default": url}})
    with disposing(app), app.app_context():
        with pytest.raises(RuntimeError, match="is not a valid database URL") as caught:
            current_session.execute(text("select 1"))
    assert "s3cret" not in "".join(traceback.format_exception(caught.value))


@pytest.mark.skipif(
    importlib.util.find_spec("MySQLdb") is not None, reason="mysqlclient is installed here"
)
def test_driver_package_not_installed() -> None:
    """A driver whose package is missing is reported with the key, the driver and the fix."""
    app = create_app({"SQLALCHEMY_ENGINES": {"default": "mysql+mysqldb://user@localhost/db"}})
    message = (
        r"'SQLALCHEMY_ENGINES\['default'\]' names the driver 'mysql\+mysqldb', whose package"
        r" is not installed \(No module named 'MySQLdb'\)\. Install it"
    )
    with disposing(app), app.app_context():
        with pytest.raises(RuntimeError, match=message):
            current_session.execute(text("select 1"))


async def test_psycopg_url_makes_an_async_engine() -> None:
    """'postgresql+psycopg://' in SQLALCHEMY_ASYNC_ENGINES is accepted: psycopg is async too."""
    config = {"SQLALCHEMY_ASYNC_ENGINES": {"default": "postgresql+psycopg://user@localhost/db"}}
    engine = create_configured_engine(config, "default", is_async=True)
    assert isinstance(engine, AsyncEngine)
    try:
        assert engine.dialect.is_async
    finally:
        await engine.dispose()


# -- the shell ------------------------------------------------------------------------------


def test_flask_shell_context(sync_url: str) -> None:
    """'flask shell' gets current_session, usable at once in the shell's app context."""
    with disposing(create_app({"SQLALCHEMY_ENGINES": {"default": sync_url}})) as app:
        namespace = app.make_shell_context()
        assert namespace["current_session"] is current_session
        with app.app_context():
            proxy = namespace["current_session"]
            assert proxy._get_current_object() is session
            assert proxy.execute(text("select 1")).scalar_one() == 1
        # The real command: an interactive console reading this input.
        line = "print('answer:', current_session.execute(__import__('sqlalchemy').text('select 42')).scalar_one())"  # noqa: E501
        result = app.test_cli_runner().invoke(shell_command, input=line + "\n")
        assert result.exit_code == 0, result.output
        assert "answer: 42" in result.output
    assert len(session.registry) == 0


@needs_quart
async def test_quart_shell_context(async_url: str) -> None:
    """'quart shell' gets current_session too."""
    app = create_quart_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": async_url}})
    namespace = app.make_shell_context()
    assert namespace["current_session"] is current_session
    async with app.test_app():
        async with app.app_context():
            proxy = namespace["current_session"]
            assert proxy._get_current_object() is quart_asession
            assert (await proxy.execute(text("select 1"))).scalar_one() == 1


# -- CLI commands ----------------------------------------------------------------------------


def test_flask_sync_command(sync_url: str) -> None:
    """A Flask command uses current_session directly; it is closed when the command ends."""
    with disposing(create_app({"SQLALCHEMY_ENGINES": {"default": sync_url}})) as app:
        cli = app.test_cli_runner()
        for number in (1, 2):
            result = cli.invoke(args=["add", f"todo {number}"])
            assert result.exit_code == 0, result.output
            assert result.output == f"{number} todos\n"
        assert len(session.registry) == 0
        (engine,) = engines_of(app)
        assert checked_out(engine) == 0
        assert app.test_client().get("/todos").json == ["todo 1", "todo 2"]


def test_flask_async_command(async_url: str) -> None:
    """A Flask command awaits through asession.run() on the shared loop."""
    with disposing(create_async_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": async_url}})) as app:
        cli = app.test_cli_runner()
        for number in (1, 2):
            result = cli.invoke(args=["add", f"todo {number}"])
            assert result.exit_code == 0, result.output
            assert result.output == f"{number} todos\n"
        assert len(asession.registry) == 0
        (engine,) = engines_of(app)
        assert checked_out(engine) == 0
        assert app.test_client().get("/todos").json == ["todo 1", "todo 2"]


@needs_quart
def test_quart_sync_command(sync_url: str) -> None:
    """A Quart command (run inside Quart's own asyncio.run) uses a sync scoped session."""
    with disposing(create_quart_app({"SQLALCHEMY_ENGINES": {"default": sync_url}})) as app:
        cli = app.test_cli_runner()
        for number in (1, 2):
            result = cli.invoke(args=["add-sync", f"todo {number}"])
            assert result.exit_code == 0, result.output
            assert result.output == f"{number} todos\n"
        assert len(quart_session.registry) == 0
        (engine,) = engines_of(app)
        assert isinstance(engine, Engine)
        assert checked_out(engine) == 0


@needs_quart
def test_quart_async_command(async_url: str) -> None:
    """A Quart command awaits through run(); its sessions are closed when the coroutine ends."""
    with disposing(create_quart_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": async_url}})) as app:
        cli = app.test_cli_runner()
        for number in (1, 2):
            result = cli.invoke(args=["add-async", f"todo {number}"])
            assert result.exit_code == 0, result.output
            assert result.output == f"{number} todos\n"
        assert len(quart_asession.registry) == 0
        (engine,) = engines_of(app)
        assert isinstance(engine, AsyncEngine)
        assert checked_out(engine) == 0


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
