"""Engines made from ``app.config`` and their errors (``_engines.py``).

``create_configured_engine``: each config mistake (no entry, no URL, a bad URL or driver,
options ``create_engine()`` rejects) raises at first use naming the key, and fixing the
config works, for sync Flask, Flask async and Quart; an invalid URL never shows its
password; a driver whose package is missing; server-side cursors; a psycopg URL making an
async engine. Then how an app makes its engines and session factories: once each, shared.
The factories and their scoped sessions are in ``tests/support/config_apps.py``.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import threading
import time
import traceback
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.exc import ArgumentError, InvalidRequestError, SADeprecationWarning
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from async_scoped_session_ext import current_session, flask_scoped_session
from async_scoped_session_ext._config import create_configured_engine
from async_scoped_session_ext._engines import AppEngines

from .support import config_apps
from .support.config_apps import (
    GOOD_ASYNC_CONFIG,
    GOOD_SYNC_CONFIG,
    Config,
    asession,
    count_query,
    create_app,
    create_async_app,
    create_quart_app,
    quart_asession,
    session,
)
from .support.engines import disposing, engines_of
from .support.environment import needs_quart
from .support.models import Todo

# A fixture: imported into the module, pytest finds it.
sync_url = config_apps.sync_url

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
        r" .*\(the options given: \['pool_size'\];",
    ),
    (
        {"SQLALCHEMY_ENGINES": {"default": {"url": "sqlite://", "pool_sise": 5}}},
        TypeError,
        r"'SQLALCHEMY_ENGINES\['default'\]' has engine options that create_engine\(\) rejects:"
        r" Invalid argument\(s\) 'pool_sise'",
    ),
    (  # SQLAlchemy looks the value up in a table: a KeyError
        {"SQLALCHEMY_ENGINES": {"default": {"url": "sqlite://", "echo": "bogus"}}},
        ValueError,
        r"'SQLALCHEMY_ENGINES\['default'\]' has engine options that create_engine\(\) rejects:"
        r" 'bogus' \(the options given: \['echo'\]; in the URL's query string: \[\]\)",
    ),
    (  # the option is in the URL, not in the dict
        {"SQLALCHEMY_ENGINES": {"default": "sqlite:///unused.db?timeout=abc"}},
        ValueError,
        r"'SQLALCHEMY_ENGINES\['default'\]' has engine options that create_engine\(\) rejects:"
        r" .*\(the options given: \[\]; in the URL's query string: \['timeout'\]\)",
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
        r" create_async_engine\(\) rejects: .*\(the options given: \['pool_size'\];",
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
        r" .* does not support server side cursors \(the options given: \['server_side_cursors'\];"
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


def test_option_error_of_a_kind_of_its_own(tmp_path: Path) -> None:
    """An option error that is none of SQLAlchemy's kinds is re-raised as a ValueError.

    connect_args written as a string: create_engine() updates a dict with it, which raises
    a plain ValueError. It is reported as an option error naming the key and the option,
    and fixing the config works.
    """
    url = f"sqlite:///{tmp_path / 'app.db'}"
    options: dict[str, t.Any] = {"url": url, "connect_args": "timeout=5"}
    app = create_app({"SQLALCHEMY_ENGINES": {"default": options}})
    message = (
        r"'SQLALCHEMY_ENGINES\['default'\]' has engine options that create_engine\(\) rejects:"
        r" .* \(the options given: \['connect_args'\];"
    )
    with disposing(app):
        with app.app_context(), pytest.raises(ValueError, match=message) as caught:
            current_session.execute(text("select 1"))
        assert type(caught.value) is ValueError
        assert type(caught.value.__cause__) is ValueError
        assert engines_of(app) == []
        options["connect_args"] = {"timeout": 5}
        with app.app_context():
            assert current_session.execute(text("select 1")).scalar_one() == 1
    assert len(session.registry) == 0


# -- one engine per name, one session factory per scoped session ---------------------------


def test_scoped_sessions_of_one_name_share_its_engine(sync_url: str) -> None:
    """Two scoped sessions of one name, with their own session options, share its engine."""
    writer = flask_scoped_session(name="reports")
    reader = flask_scoped_session(name="reports", session_options={"autoflush": False})
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"reports": sync_url}
    writer.init_app(app)
    reader.init_app(app)
    with disposing(app), app.app_context():
        writer.add(Todo(title="one"))
        writer.commit()
        assert reader.scalar(count_query()) == 1
        (engine,) = engines_of(app)
        assert writer().bind is engine and reader().bind is engine
        assert writer().autoflush is True and reader().autoflush is False
        # A sessionmaker makes its sessions of a class of its own: two classes, two factories.
        assert type(writer()) is not type(reader())


WAIT = 30.0  # seconds a thread may take; a hang fails instead of blocking


def wait_until(predicate: t.Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def waits_for_the_engines_lock(thread: threading.Thread) -> bool:
    """Whether *thread* is in AppEngines.factory, past its first look, at the lock."""
    lines, first = inspect.getsourcelines(AppEngines.factory)
    (offset,) = [i for i, line in enumerate(lines) if "with self._lock:" in line]
    frame = sys._current_frames().get(t.cast(int, thread.ident))
    return (
        frame is not None
        and frame.f_code is AppEngines.factory.__code__
        and frame.f_lineno == first + offset
    )


def test_concurrent_first_use_makes_one_engine_and_factory(sync_url: str) -> None:
    """Two threads' first use at once (a threaded server's first two requests): the second
    waits while the first makes the engine, then takes the session factory the first made.
    """
    making, made = threading.Event(), threading.Event()
    pools: list[QueuePool] = []

    class SlowPool(QueuePool):
        """A pool whose creation lasts until the test lets it end: a slow engine creation."""

        def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
            pools.append(self)
            making.set()
            assert made.wait(WAIT), "the test never let the engine be made"
            super().__init__(*args, **kwargs)

    scoped = flask_scoped_session()
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": {"url": sync_url, "poolclass": SlowPool}}
    scoped.init_app(app)
    sessions: dict[str, Session] = {}
    errors: list[BaseException] = []

    def first_use(name: str) -> None:
        try:
            with app.app_context():
                sessions[name] = scoped()
                assert scoped.execute(text("select 1")).scalar_one() == 1
        except BaseException as error:
            errors.append(error)

    first = threading.Thread(target=first_use, args=("first",), daemon=True)
    second = threading.Thread(target=first_use, args=("second",), daemon=True)
    with disposing(app):
        first.start()
        try:
            assert making.wait(WAIT), "the first thread never began making the engine"
            second.start()
            wait_until(lambda: waits_for_the_engines_lock(second), "the second thread to wait")
        finally:
            made.set()
            first.join(WAIT)
            if second.ident is not None:
                second.join(WAIT)
        assert not first.is_alive() and not second.is_alive()
        assert errors == []
        assert len(pools) == 1, "the engine was made more than once"
        (engine,) = engines_of(app)
        assert sessions["first"].bind is engine and sessions["second"].bind is engine
        # A sessionmaker makes its sessions of a class of its own: one class, one factory.
        assert type(sessions["first"]) is type(sessions["second"])
    assert len(scoped.registry) == 0
