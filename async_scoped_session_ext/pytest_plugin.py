"""The pytest plugin's entry point: inert until a project enables it.

Installed with the package (a ``pytest11`` entry point), it only declares its ini options.
Setting ``asse_app`` turns it on: the fixtures of :mod:`async_scoped_session_ext.fixtures`
are then available to every test::

    [tool.pytest.ini_options]
    asse_app = "myapp:create_app"
    asse_database_url = "postgresql+psycopg://postgres@127.0.0.1/test"        # optional
    asse_async_database_url = "postgresql+asyncpg://postgres@127.0.0.1/test"  # optional

A project that builds its app in its own ``app`` fixture enables the fixtures with
``pytest_plugins = ["async_scoped_session_ext.fixtures"]`` in its root ``conftest.py``.
"""

from __future__ import annotations

import pytest

FIXTURES = "async_scoped_session_ext.fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ini options (no fixture exists until ``asse_app`` is set)."""
    parser.addini(
        "asse_app",
        "async_scoped_session_ext: the app factory ('package.module:create_app') for the"
        " 'app' fixture; setting it enables the plugin's fixtures.",
        default="",
    )
    parser.addini(
        "asse_database_url",
        "async_scoped_session_ext: the test database for the app's sync sessions"
        " (SQLALCHEMY_ENGINES['default'] in the 'app_config' fixture).",
        default="",
    )
    parser.addini(
        "asse_async_database_url",
        "async_scoped_session_ext: the test database for the app's async sessions"
        " (SQLALCHEMY_ASYNC_ENGINES['default'] in the 'app_config' fixture).",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Load the fixtures when the project asked for them with ``asse_app``."""
    if config.getini("asse_app"):
        config.pluginmanager.import_plugin(FIXTURES)
