"""Engines made lazily from ``app.config``, and every known engine's process lifecycle.

``SQLALCHEMY_ENGINES`` (sync) and ``SQLALCHEMY_ASYNC_ENGINES`` (async) map a name to a URL,
or to a dict of ``create_engine`` / ``create_async_engine`` arguments with a ``"url"`` key.
A scoped session created without a session factory uses the engine named like itself
(``"default"`` unless given ``name=``), created on first use so that config set after
``init_app`` (an app factory, a test) still takes effect.
"""

from __future__ import annotations

import atexit
import os
import threading
import typing as t
import weakref

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import ArgumentError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from ._connect import connect_outside_context
from ._runner import runner

if t.TYPE_CHECKING:
    from flask.sansio.app import App

SYNC_CONFIG_KEY = "SQLALCHEMY_ENGINES"
ASYNC_CONFIG_KEY = "SQLALCHEMY_ASYNC_ENGINES"

AnyEngine = Engine | AsyncEngine
AnyFactory = sessionmaker[t.Any] | async_sessionmaker[t.Any]

# Process-wide, like the fork itself: no engine may hand a parent's pooled connection to a
# forked child. Engines are held weakly; each is the sync core of an engine we know of.
_known_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_created_sync_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def guard_fork(engine: AnyEngine) -> None:
    """Make a forked child open its own connections for *engine*."""
    _known_engines.add(engine.sync_engine if isinstance(engine, AsyncEngine) else engine)


# The parent's pools, kept alive in a forked child: a driver's finaliser must never run on a
# connection the parent still uses (asyncpg's sends Terminate on the shared socket and
# unregisters it from the parent's epoll set).
_inherited_pools: list[object] = []


def _after_fork_in_child() -> None:
    for engine in list(_known_engines):
        _inherited_pools.append(engine.pool)
        engine.dispose(close=False)  # a new pool for the child; the parent's stays untouched


def _dispose_created_sync_engines() -> None:
    for engine in list(_created_sync_engines):
        engine.dispose()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_dispose_created_sync_engines)


def _engine_options(config: t.Mapping[str, t.Any], key: str, name: str) -> dict[str, t.Any]:
    engines = config.get(key)
    if not isinstance(engines, t.Mapping) or name not in engines:
        example = "sqlite+aiosqlite:///app.db" if key == ASYNC_CONFIG_KEY else "sqlite:///app.db"
        raise RuntimeError(
            f"'{key}[{name!r}]' is not defined in the app's config, and the scoped session"
            f" {name!r} was created without a session factory, so the library makes its"
            f" engine from the config. Set app.config[{key!r}] = {{{name!r}: {example!r}}}"
            " (a URL, or a dict of engine options with a 'url' key) in your app factory"
            " before the first request, or pass a sessionmaker."
        )
    value = engines[name]
    options = {"url": value} if isinstance(value, str) else dict(value)
    if "url" not in options:
        raise RuntimeError(f"'{key}[{name!r}]' has no 'url' key: {sorted(options)!r}.")
    return options


def create_configured_engine(config: t.Mapping[str, t.Any], name: str, is_async: bool) -> AnyEngine:
    """Create the engine *name* from the app's config, with errors that say the fix."""
    key = ASYNC_CONFIG_KEY if is_async else SYNC_CONFIG_KEY
    options = _engine_options(config, key, name)
    url = options.pop("url")
    try:
        engine: AnyEngine = (create_async_engine if is_async else create_engine)(url, **options)
    except InvalidRequestError as error:  # SQLAlchemy: "requires an async driver"
        raise TypeError(
            f"'{key}[{name!r}]' names a sync driver, but async_scoped_session needs an async"
            " one: use for example 'postgresql+asyncpg://' or 'sqlite+aiosqlite:///'."
        ) from error
    except ArgumentError as error:
        raise RuntimeError(f"'{key}[{name!r}]' is not a valid database URL: {error}") from error
    if not is_async and t.cast(Engine, engine).dialect.is_async:
        engine.dispose()
        raise TypeError(
            f"'{key}[{name!r}]' names an async driver, but flask_scoped_session needs a sync"
            f" one: use for example 'postgresql+psycopg://' or 'sqlite:///', or put the URL"
            f" in '{ASYNC_CONFIG_KEY}' for an async_scoped_session."
        )
    guard_fork(engine)
    if isinstance(engine, AsyncEngine):
        connect_outside_context(engine)  # a pooled connection must not pin a request's context
    return engine


class AppEngines:
    """The engines and session factories one app made from its config, made once each."""

    def __init__(self, app: App, is_quart: bool) -> None:
        self._app = weakref.ref(app)
        self._is_quart = is_quart
        self._lock = threading.Lock()
        self._engines: dict[tuple[str, bool], AnyEngine] = {}
        self._factories: dict[tuple[str, bool, int], AnyFactory] = {}

    def factory(
        self, name: str, is_async: bool, session_options: t.Mapping[str, t.Any]
    ) -> AnyFactory:
        """The session factory bound to the engine *name*, creating both on first use."""
        key = (name, is_async, id(session_options))
        factory = self._factories.get(key)
        if factory is not None:
            return factory
        with self._lock:
            factory = self._factories.get(key)
            if factory is None:
                engine = self._engine(name, is_async)
                if isinstance(engine, AsyncEngine):
                    factory = async_sessionmaker(bind=engine, **session_options)
                else:
                    factory = sessionmaker(bind=engine, **session_options)
                self._factories[key] = factory
            return factory

    def _engine(self, name: str, is_async: bool) -> AnyEngine:
        engine = self._engines.get((name, is_async))
        if engine is None:
            app = self._app()
            if app is None:  # pragma: no cover - the app owns this object
                raise RuntimeError("The app of these engines no longer exists.")
            engine = create_configured_engine(app.config, name, is_async)
            self._engines[(name, is_async)] = engine
            # A Quart app disposes them in after_serving; what is left at exit (engines made
            # by CLI commands, which never serve) is disposed then. An async engine can only
            # be disposed at exit if its connections live on the shared loop.
            if isinstance(engine, AsyncEngine):
                if not self._is_quart or runner.owns_running_loop():
                    runner.dispose_at_exit(engine)
            else:
                _created_sync_engines.add(engine)
        return engine

    def created(self) -> list[AnyEngine]:
        """The engines made so far."""
        return list(self._engines.values())

    async def dispose(self) -> None:
        """Dispose every engine made so far; later use makes them again from the config."""
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
            self._factories.clear()
        for engine in engines:
            if isinstance(engine, AsyncEngine):
                await engine.dispose()
            else:
                engine.dispose()
