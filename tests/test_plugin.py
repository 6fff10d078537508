"""The pytest plugin, run on a small project with ``pytester``: every test is rolled back."""

from __future__ import annotations

import collections.abc as cabc
import importlib
import importlib.metadata
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, select, text

from .support.databases import database_url
from .support.environment import HAS_QUART, RUN_WARNINGS, needs_quart
from .support.plugin_project import (
    APP_MODULE,
    APP_VARIANTS,
    BASE_INI,
    INI,
    OWN_APP_TESTS,
    TESTS,
    VARIANT_TESTS,
)

pytest_plugins = ["pytester"]

# Imported here, not first in an in-process inner run: pytester unloads what a run imported,
# SQLAlchemy warns when a dialect module registers its functions a second time, and a C
# extension (asyncpg's) must not be initialised twice in one process.
for _module in (
    "aiosqlite",
    "asyncpg",
    "psycopg",
    *(["quart"] if HAS_QUART else []),
    "sqlalchemy.dialects.postgresql.asyncpg",
    "sqlalchemy.dialects.postgresql.psycopg",
    "sqlalchemy.dialects.sqlite.aiosqlite",
):
    importlib.import_module(_module)

metadata = MetaData()
items = Table(
    "plugin_item",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50)),
)

# (kind of app, backend of its sessions)
CASES = [
    ("flask", "sqlite"),
    ("flask", "postgresql"),
    ("flask_async", "aiosqlite"),
    ("flask_async", "asyncpg"),
    pytest.param("quart", "aiosqlite", marks=needs_quart),
    pytest.param("quart", "asyncpg", marks=needs_quart),
]


def sync_twin(url: str) -> str:
    """The same database through a sync driver, to check it from outside the test run."""
    return url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")


@pytest.fixture
def project(pytester: pytest.Pytester, tmp_path: Path) -> cabc.Iterator[pytest.Pytester]:
    """An empty project directory with the app module."""
    pytester.makepyfile(app_under_test=APP_MODULE)
    yield pytester


def make_schema(url: str) -> None:
    engine = create_engine(sync_twin(url))
    metadata.drop_all(engine)
    metadata.create_all(engine)
    engine.dispose()


def rows_and_other_connections(url: str) -> tuple[int, int]:
    """How many rows the table has, and how many other connections the database has."""
    engine = create_engine(sync_twin(url))
    try:
        with engine.connect() as connection:
            rows = connection.scalar(select(func.count()).select_from(items)) or 0
            others = 0
            if connection.dialect.name == "postgresql":
                others = connection.scalar(
                    text(
                        "select count(*) from pg_stat_activity where datname ="
                        " current_database() and pid <> pg_backend_pid()"
                    )
                )
        metadata.drop_all(engine)
    finally:
        engine.dispose()
    return rows, others or 0


@pytest.mark.parametrize(("kind", "backend"), CASES)
def test_each_test_is_rolled_back(
    project: pytest.Pytester, tmp_path: Path, kind: str, backend: str
) -> None:
    """Commits by views and by the test's session are gone in the next test, failing or not."""
    url = database_url(backend, tmp_path)
    make_schema(url)
    url_option = "asse_database_url" if kind == "flask" else "asse_async_database_url"
    project.makeini(INI.format(kind=kind, url_option=url_option, url=url))
    project.makepyfile(test_app=TESTS[kind])

    result = project.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["*test_fails_after_commit*", "*fails on purpose*"])
    assert rows_and_other_connections(url) == (0, 0)


def test_a_later_run_starts_empty(project: pytest.Pytester, tmp_path: Path) -> None:
    """Run the same passing test twice: the second run sees none of the first one's commits."""
    url = database_url("sqlite", tmp_path)
    make_schema(url)
    project.makeini(INI.format(kind="flask", url_option="asse_database_url", url=url))
    project.makepyfile(
        test_twice="""
        def test_add(client):
            assert client.post("/items/x").json == {"count": 1}
        """
    )
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert rows_and_other_connections(url) == (0, 0)


def test_inert_without_asse_app(project: pytest.Pytester) -> None:
    """Installed but not enabled, the plugin adds no fixture that could shadow another."""
    project.makeini(BASE_INI)
    project.makepyfile(
        test_plain="""
        def test_uses_client(client):
            pass
        """
    )
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'client' not found*"])
    fixtures = project.runpytest("--fixtures", "-p", "no:cacheprovider")
    assert "isolated_db" not in fixtures.stdout.str()


def test_own_app_fixture_with_pytest_plugins(project: pytest.Pytester, tmp_path: Path) -> None:
    """A project that builds its app itself enables the fixtures from its conftest."""
    url = database_url("postgresql", tmp_path)
    make_schema(url)
    project.makeini(BASE_INI)
    project.makeconftest(
        f"""
        import pytest
        from app_under_test import create_flask

        pytest_plugins = ["async_scoped_session_ext.fixtures"]

        @pytest.fixture
        def app():
            return create_flask({{"SQLALCHEMY_ENGINES": {{"default": {url!r}}}}})
        """
    )
    project.makepyfile(test_own=OWN_APP_TESTS)
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert rows_and_other_connections(url) == (0, 0)


def test_app_factory_without_config_argument(project: pytest.Pytester, tmp_path: Path) -> None:
    """A factory that takes no argument gets ``app_config`` applied to the app it returns."""
    url = database_url("sqlite", tmp_path)
    make_schema(url)
    project.makepyfile(
        factory_without_argument="""
        from app_under_test import create_flask

        def make():
            return create_flask({"SQLALCHEMY_ENGINES": {"other": "sqlite://"}})
        """
    )
    project.makeini(
        INI.format(kind="flask", url_option="asse_database_url", url=url).replace(
            "app_under_test:create_flask", "factory_without_argument:make"
        )
    )
    project.makepyfile(
        test_config="""
        def test_config(app, client):
            assert app.config["TESTING"] is True
            assert set(app.config["SQLALCHEMY_ENGINES"]) == {"default", "other"}
            assert client.post("/items/x").json == {"count": 1}
        """
    )
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert rows_and_other_connections(url) == (0, 0)


def test_unimportable_asse_app_is_a_usage_error(project: pytest.Pytester) -> None:
    """A wrong ``asse_app`` says how to write it."""
    project.makeini(BASE_INI + "asse_app = no_such_module:create_app\n")
    project.makepyfile(test_x="def test_x(app):\n    pass\n")
    result = project.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*asse_app = 'no_such_module:create_app' names nothing*"])
    assert result.ret != 0


@needs_quart
def test_entry_point_loads_in_a_fresh_interpreter(project: pytest.Pytester, tmp_path: Path) -> None:
    """The ``pytest11`` entry point of the installed package enables the plugin on its own."""
    names = [ep.value for ep in importlib.metadata.entry_points(group="pytest11")]
    assert "async_scoped_session_ext.pytest_plugin" in names
    url = database_url("aiosqlite", tmp_path)
    make_schema(url)
    project.makeini(INI.format(kind="quart", url_option="asse_async_database_url", url=url))
    project.makepyfile(test_app=TESTS["quart"])
    # pytest's -W: the project's filterwarnings = error overrides the inherited PYTHONWARNINGS.
    warnings = [f"-W{spec}" for spec in RUN_WARNINGS]
    result = project.runpytest_subprocess("-p", "no:cacheprovider", *warnings)
    result.assert_outcomes(passed=5, failed=1)
    assert rows_and_other_connections(url) == (0, 0)


def test_app_fixture_without_asse_app_says_what_to_do(project: pytest.Pytester) -> None:
    """Fixtures loaded by ``pytest_plugins`` but no ``app`` fixture: the failure says the fix."""
    project.makeini(BASE_INI)
    project.makeconftest('pytest_plugins = ["async_scoped_session_ext.fixtures"]\n')
    project.makepyfile(test_x="def test_x(client):\n    pass\n")
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*set 'asse_app = package.module:create_app'*"])


@pytest.mark.parametrize("name", ["app", "unreadable"])
def test_asse_app_naming_an_app_or_an_unreadable_factory(
    project: pytest.Pytester, tmp_path: Path, name: str
) -> None:
    """``asse_app`` may name the app itself, or a factory whose signature cannot be read
    (called without the config): either way ``app_config`` is applied to the app before its
    first request, replacing only the named engines, and every test is rolled back."""
    url = database_url("sqlite", tmp_path)
    make_schema(url)
    project.makepyfile(app_variants=APP_VARIANTS)
    project.makeini(
        INI.format(kind="flask", url_option="asse_database_url", url=url).replace(
            "app_under_test:create_flask", f"app_variants:{name}"
        )
    )
    project.makepyfile(test_variant=VARIANT_TESTS.format(url=url))
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert rows_and_other_connections(url) == (0, 0)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("settings", "*asse_app = 'app_variants:settings' names a dict, neither a Flask*"),
        ("make_settings", "*asse_app = 'app_variants:make_settings' names a factory that*"),
    ],
)
def test_asse_app_naming_neither_app_nor_factory(
    project: pytest.Pytester, name: str, message: str
) -> None:
    """An ``asse_app`` naming something that is neither an app nor a factory, or a factory of
    something else, is a usage error naming the option's value, as an unimportable one is."""
    project.makepyfile(app_variants=APP_VARIANTS)
    project.makeini(BASE_INI + f"asse_app = app_variants:{name}\n")
    project.makepyfile(test_x="def test_x(app):\n    pass\n")
    result = project.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines([message])


def test_fixtures_without_the_plugin_options(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With plugin autoloading off (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``) the entry point never
    declares its ini options; fixtures enabled by ``pytest_plugins`` still work: ``app_config``
    holds ``TESTING`` only, and the project's own ``app`` fixture is isolated per test."""
    url = database_url("sqlite", tmp_path)
    make_schema(url)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    project.makeini("[pytest]\nfilterwarnings = error\n")
    project.makeconftest(
        f"""
        import pytest
        from app_under_test import create_flask

        pytest_plugins = ["async_scoped_session_ext.fixtures"]

        @pytest.fixture
        def app(app_config):
            assert app_config == {{"TESTING": True}}
            return create_flask({{**app_config, "SQLALCHEMY_ENGINES": {{"default": {url!r}}}}})
        """
    )
    project.makepyfile(test_own=OWN_APP_TESTS)
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert "asyncio: mode" not in result.stdout.str()  # autoloading was off: no pytest-asyncio
    assert rows_and_other_connections(url) == (0, 0)


@needs_quart
def test_quart_app_without_pytest_asyncio(project: pytest.Pytester, tmp_path: Path) -> None:
    """In an interpreter without pytest-asyncio (hidden from imports, its plugin off), the
    fixtures still load, and a test of a Quart app fails at set-up saying what to install."""
    url = database_url("aiosqlite", tmp_path)
    project.makeini(
        "[pytest]\nfilterwarnings = error\nasse_app = app_under_test:create_quart\n"
        f"asse_async_database_url = {url}\n"
    )
    project.makeconftest('import sys\n\nsys.modules["pytest_asyncio"] = None  # not installed\n')
    project.makepyfile(test_quart="def test_client(client):\n    pass\n")
    warnings = [f"-W{spec}" for spec in RUN_WARNINGS]
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio", *warnings)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*Testing a Quart app needs pytest-asyncio installed.*"])
