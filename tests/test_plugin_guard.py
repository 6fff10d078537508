"""The plugin's ``app`` fixture refuses an app whose default engine is not the test database."""

from __future__ import annotations

import collections.abc as cabc
from pathlib import Path

import pytest

from .support.plugin_project import BASE_INI

pytest_plugins = ["pytester"]

# Factories that lose the test config the way real ones do, and one that binds its own
# engine. None of them connects: the fixture fails before any test runs.
DROPPING_APPS = """
from flask import Flask
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import async_scoped_session, flask_scoped_session

DEV = "postgresql+psycopg://dev:s3cret@127.0.0.1:5432/dev"
ASYNC_DEV = "postgresql+asyncpg://dev:s3cret@127.0.0.1:5432/dev"
sync_session = flask_scoped_session()
async_session = async_scoped_session()


class DevConfig:
    SQLALCHEMY_ENGINES = {"default": DEV}
    SQLALCHEMY_ASYNC_ENGINES = {"default": {"url": ASYNC_DEV, "pool_size": 2}}


def from_object_of_a_dict(config=None):
    app = Flask(__name__)
    app.config.from_object(DevConfig)
    if config is not None:
        app.config.from_object(config)  # a dict: reads no key, keeps DevConfig's URLs
    sync_session.init_app(app)
    async_session.init_app(app)
    return app


def from_mapping(config=None):
    app = Flask(__name__)
    app.config.from_object(DevConfig)
    app.config.from_mapping(config or {})
    sync_session.init_app(app)
    async_session.init_app(app)
    return app


def own_engine(config=None):
    app = Flask(__name__)
    app.config.from_mapping(config or {})
    flask_scoped_session(sessionmaker(bind=create_engine(DEV)), app)
    return app
"""

USES_APP = "def test_uses_app(app):\n    pass\n"


@pytest.fixture
def project(pytester: pytest.Pytester) -> cabc.Iterator[pytest.Pytester]:
    """A project whose app factories lose the test config."""
    pytester.makepyfile(dropping_apps=DROPPING_APPS)
    pytester.makepyfile(test_app=USES_APP)
    yield pytester


def run(project: pytest.Pytester, factory: str, option: str, url: str) -> pytest.RunResult:
    project.makeini(BASE_INI + f"asse_app = dropping_apps:{factory}\n{option} = {url}\n")
    return project.runpytest("-p", "no:cacheprovider")


@pytest.mark.parametrize(
    ("option", "url", "kind", "dev"),
    [
        (
            "asse_database_url",
            "postgresql+psycopg://test:t0ps3cret@127.0.0.1:5432/test",
            "sync",
            "postgresql+psycopg://dev:***@127.0.0.1:5432/dev",
        ),
        (
            "asse_async_database_url",
            "postgresql+asyncpg://test:t0ps3cret@127.0.0.1:5432/test",
            "async",
            "postgresql+asyncpg://dev:***@127.0.0.1:5432/dev",
        ),
    ],
)
def test_dropped_test_url_fails_the_app_fixture(
    project: pytest.Pytester, option: str, url: str, kind: str, dev: str
) -> None:
    """A factory that drops the test URL (``from_object(dict)``) fails with both URLs named,
    passwords hidden, and says the fix."""
    result = run(project, "from_object_of_a_dict", option, url)
    result.assert_outcomes(errors=1)
    masked = url.replace("t0ps3cret", "***")
    result.stdout.fnmatch_lines(
        [
            f"*would use the database '{dev}' for its default {kind} engine, not the test"
            f" database '{masked}'*",
        ]
    )
    output = result.stdout.str()
    assert "Accept a mapping with app.config.from_mapping(config)" in output
    assert "s3cret" not in output
    assert "t0ps3cret" not in output


def test_a_factory_that_keeps_the_test_url_passes(project: pytest.Pytester, tmp_path: Path) -> None:
    """The same defaults, overridden with ``from_mapping``: the fixture accepts the app."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    run(project, "from_mapping", "asse_database_url", url).assert_outcomes(passed=1)


def test_an_own_engine_that_is_not_the_test_database_fails(project: pytest.Pytester) -> None:
    """A default session bound to the app's own engine ignores the test URL: that fails too."""
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    result = run(project, "own_engine", "asse_database_url", url)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*would use the database 'postgresql+psycopg://dev:***@*"])
