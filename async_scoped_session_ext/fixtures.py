"""pytest fixtures for apps that use the library: each test in a transaction rolled back after.

Enabled by the ``asse_app`` ini option (the plugin in :mod:`.pytest_plugin` then loads this
module), or explicitly with ``pytest_plugins = ["async_scoped_session_ext.fixtures"]`` in
the root ``conftest.py`` of a project that defines its own ``app`` fixture.

- ``app_config``: the config for the app factory: ``TESTING`` and the ini's test database
  URLs. Override it to point the app at the test database your own way.
- ``app``: the app from the ``asse_app`` factory, made with ``app_config``. Override it to
  build the app yourself.
- ``isolated_db``: an :class:`~async_scoped_session_ext.testing.Isolation` of ``app``:
  every session the app makes joins a transaction rolled back after the test.
- ``client``: the app's test client, its requests isolated.
- ``db_session`` / ``async_db_session``: a session in the same transaction, for the test's
  own setup and checks.
"""

from __future__ import annotations

import importlib
import inspect
import typing as t

import pytest
from sqlalchemy import URL, Engine
from sqlalchemy.orm import Session

from ._app import get_state
from ._config import ASYNC_CONFIG_KEY, SYNC_CONFIG_KEY, url_or_none
from ._frameworks import is_quart_app
from ._sa_asyncio import AsyncEngine, AsyncSession
from .testing import Isolation, aisolate, isolate

if t.TYPE_CHECKING:
    from flask.sansio.app import App

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - only Quart apps need it
    pytest_asyncio = None  # type: ignore[assignment]

APP_OPTION = "asse_app"
URL_OPTION = "asse_database_url"
ASYNC_URL_OPTION = "asse_async_database_url"


def ini(config: pytest.Config, name: str) -> str:
    """The ini option *name*, or ``""`` when the plugin's options are not registered."""
    try:
        return str(config.getini(name) or "")
    except ValueError:
        return ""


@pytest.fixture
def app_config(pytestconfig: pytest.Config) -> dict[str, t.Any]:
    """The config the ``app`` fixture's factory gets: the ini's test database URLs."""
    config: dict[str, t.Any] = {"TESTING": True}
    if url := ini(pytestconfig, URL_OPTION):
        config[SYNC_CONFIG_KEY] = {"default": url}
    if url := ini(pytestconfig, ASYNC_URL_OPTION):
        config[ASYNC_CONFIG_KEY] = {"default": url}
    return config


@pytest.fixture
def app(pytestconfig: pytest.Config, app_config: dict[str, t.Any]) -> App:
    """The app made by the ``asse_app`` factory (``"package.module:create_app"``)."""
    spec = ini(pytestconfig, APP_OPTION)
    if not spec:
        pytest.fail(
            "The 'app' fixture needs the app factory: set 'asse_app = package.module:"
            "create_app' in the [pytest] ini options, or define your own 'app' fixture in"
            " conftest.py.",
            pytrace=False,
        )
    made = make_app(spec, app_config)
    check_test_databases(made, app_config, spec)
    return made


def make_app(spec: str, config: t.Mapping[str, t.Any]) -> App:
    """Import ``"module:name"`` and make the app with *config*.

    *name* may be an app, or a factory. A factory that takes an argument is given the
    config (Flask's ``create_app(test_config)`` convention); otherwise the config is
    applied to the app it returns, before any request, so lazily made engines use it.
    """
    module_name, _, name = spec.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), name or "create_app")
    except (ImportError, AttributeError) as error:
        raise pytest.UsageError(
            f"asse_app = {spec!r} names nothing importable ({error}). Give it as"
            " 'package.module:create_app' (a factory) or 'package.module:app'."
        ) from error
    if hasattr(target, "extensions"):  # an app itself
        app = t.cast("App", target)
        _apply(app, config)
        return app
    if not callable(target):
        raise pytest.UsageError(
            f"asse_app = {spec!r} names a {type(target).__name__}, neither a Flask or Quart app"
            " nor a factory. Name the app ('package.module:app') or the function that makes"
            " it ('package.module:create_app')."
        )
    takes_config = _takes_argument(target)
    made = target(dict(config)) if takes_config else target()
    if not hasattr(made, "extensions"):
        raise pytest.UsageError(
            f"asse_app = {spec!r} names a factory that returned a {type(made).__name__}, not a"
            " Flask or Quart app. Make it return the app."
        )
    app = t.cast("App", made)
    if not takes_config:
        _apply(app, config)
    return app


def _takes_argument(factory: t.Callable[..., object]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def _apply(app: App, config: t.Mapping[str, t.Any]) -> None:
    for key, value in config.items():
        if key in (SYNC_CONFIG_KEY, ASYNC_CONFIG_KEY) and isinstance(value, t.Mapping):
            value = {**(app.config.get(key) or {}), **value}  # replace the named engines only
        app.config[key] = value


def check_test_databases(app: App, config: t.Mapping[str, t.Any], spec: str) -> None:
    """Fail unless each default engine of *app* is the test database *config* names.

    A factory can drop the test config silently (``app.config.from_object(a_dict)`` reads
    no key of a dict), and the tests would then write to the development database.
    """
    for key, option, is_async in (
        (SYNC_CONFIG_KEY, URL_OPTION, False),
        (ASYNC_CONFIG_KEY, ASYNC_URL_OPTION, True),
    ):
        wanted = _default_url(config, key)
        got = _resolved_default_url(app, key, is_async)
        if wanted is None or got is None or _same(wanted, got):
            continue
        kind = "async" if is_async else "sync"
        pytest.fail(
            f"The app made by asse_app = {spec!r} would use the database {_shown(got)} for its"
            f" default {kind} engine, not the test database {_shown(wanted)} that the"
            f" 'app_config' fixture gives it ({key}['default'], from the {option!r} ini"
            " option): its tests would write to that database, so none was run. The factory"
            " most likely dropped the test config: app.config.from_object() ignores a dict"
            " (it reads attributes). Accept a mapping with app.config.from_mapping(config)"
            " (see docs/lifecycle.md), or override the 'app' fixture (or 'app_config')"
            " to point the app at the test database your own way.",
            pytrace=False,
        )


def _default_url(config: t.Mapping[str, t.Any], key: str) -> URL | str | None:
    """The URL of ``config[key]["default"]`` (a URL, or engine options with a ``"url"``)."""
    engines = config.get(key)
    value = engines.get("default") if isinstance(engines, t.Mapping) else None
    if isinstance(value, t.Mapping):
        value = value.get("url")
    if not isinstance(value, str | URL):
        return None
    url = url_or_none(value)
    return value if url is None else url  # an invalid one: the engine will report it


def _resolved_default_url(app: App, key: str, is_async: bool) -> URL | str | None:
    """The database the app's default sync or async session uses: its own factory's
    ``bind``, else its config's ``"default"`` engine."""
    state = get_state(app)
    scoped = None if state is None else (state.async_default if is_async else state.sync_default)
    factory = None if scoped is None else scoped.given_factory
    bind = getattr(factory, "kw", {}).get("bind")
    if isinstance(bind, Engine | AsyncEngine):
        return bind.url
    return _default_url(app.config, key)


def _same(one: URL | str, other: URL | str) -> bool:
    return _shown(one, hide_password=False) == _shown(other, hide_password=False)


def _shown(url: URL | str, *, hide_password: bool = True) -> str:
    if isinstance(url, str):
        return repr(url) if not hide_password else "(a URL that does not parse)"
    return repr(url.render_as_string(hide_password=hide_password))


@pytest.fixture
def isolated_db(request: pytest.FixtureRequest, app: App) -> t.Iterator[Isolation]:
    """The app's sessions, in transactions rolled back after the test (even a failing one)."""
    if is_quart_app(app):
        # A Quart app's connections must open on the test's event loop: an async fixture.
        if pytest_asyncio is None:
            pytest.fail("Testing a Quart app needs pytest-asyncio installed.", pytrace=False)
        yield t.cast(Isolation, request.getfixturevalue("_asse_quart_isolation"))
        return
    with isolate(app) as isolation:
        yield isolation


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def _asse_quart_isolation(app: App) -> t.AsyncIterator[Isolation]:
        """``isolated_db`` for a Quart app, entered on the test's event loop."""
        async with aisolate(app) as isolation:
            yield isolation


@pytest.fixture
def client(app: App, isolated_db: Isolation) -> t.Any:
    """The app's test client (Flask's or Quart's); everything its requests do is isolated."""
    return t.cast(t.Any, app).test_client()  # Flask's or Quart's (not on the shared base)


@pytest.fixture
def db_session(isolated_db: Isolation) -> Session:
    """A ``Session`` in the test's transaction: it sees what the app's views wrote."""
    return isolated_db.session()


@pytest.fixture
def async_db_session(isolated_db: Isolation) -> AsyncSession:
    """An ``AsyncSession`` in the test's transaction (Quart: await it in the test)."""
    return isolated_db.async_session()
