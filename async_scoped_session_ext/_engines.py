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

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from ._changes import track_changes
from ._config import create_configured_engine
from ._connect import connect_outside_context
from ._disconnects import count_as_disconnects
from ._runner import runner
from ._sa_asyncio import AsyncEngine, async_sessionmaker
from ._sqlite_commit import end_failed_commits
from ._types import AnyEngine, AnyFactory

if t.TYPE_CHECKING:
    from flask.sansio.app import App


# Process-wide, like the fork itself: no engine may hand a parent's pooled connection to a
# forked child (see take_charge). Engines are held weakly; each is the sync core of one.
_known_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_created_sync_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def engines_of(factory: object) -> list[AnyEngine]:
    """Every engine the session *factory* can reach, each once.

    Its ``bind``, the values of its ``binds``, and any engine among its other keyword
    arguments (those of a custom Session class, such as ``ReplicaSession``'s ``replica``,
    one engine or a list of them).
    The sync core of an async engine (what an ``AsyncSession``'s sync session class is
    given) is returned as an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` around it.
    """
    options = getattr(factory, "kw", None)  # sessionmaker and async_sessionmaker keep them
    if not isinstance(options, t.Mapping):
        return []
    found: dict[int, AnyEngine] = {}  # by the sync core: an engine and its proxy are one
    for value in options.values():
        for candidate in _values(value):
            if isinstance(candidate, AsyncEngine):
                found[id(candidate.sync_engine)] = candidate
            elif isinstance(candidate, Engine) and id(candidate) not in found:
                is_async_core = candidate.dialect.is_async
                found[id(candidate)] = AsyncEngine(candidate) if is_async_core else candidate
    return list(found.values())


def _values(option: object) -> t.Iterable[object]:
    """A keyword argument's possible engines: a mapping's values, a list's items, or itself."""
    if isinstance(option, t.Mapping):
        return option.values()
    return option if isinstance(option, list | tuple) else (option,)


def adopt(factory: object, owners: t.Iterable[AppEngines]) -> None:
    """Take charge of every engine *factory* reaches, for the process and for each app.

    Each is made safe across forks and requests (:func:`take_charge`); each app in
    *owners* disposes the async ones when it ends (:meth:`AppEngines.dispose_with_app`).
    """
    for engine in engines_of(factory):
        take_charge(engine)
        for owner in owners:
            owner.dispose_with_app(engine)


def take_charge(engine: AnyEngine) -> None:
    """Make *engine* safe to share across forks and requests.

    A forked child opens its own connections for it; an async engine opens its connections
    outside the caller's context variables, so a pooled connection never keeps a request's
    app context (or its ``g``) alive, and invalidates a connection whose driver protocol
    broke (``_disconnects``). A SQLite connection whose ``COMMIT`` failed is rolled back
    (``_sqlite_commit``).
    """
    if isinstance(engine, AsyncEngine):
        _known_engines.add(engine.sync_engine)
        connect_outside_context(engine)
        count_as_disconnects(engine)
        end_failed_commits(engine.sync_engine)
    else:
        _known_engines.add(engine)
        end_failed_commits(engine)


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


class AppEngines:
    """The engines and session factories one app made from its config, made once each."""

    def __init__(self, app: App, is_quart: bool) -> None:
        self._app = weakref.ref(app)
        self._is_quart = is_quart
        self._lock = threading.Lock()
        self._engines: dict[tuple[str, bool], AnyEngine] = {}
        self._factories: dict[tuple[str, bool, int], AnyFactory] = {}
        #: The sync cores of the async engines the app's own session factories reach,
        #: disposed after a Quart app serves (held weakly: they are the user's).
        self._reached: weakref.WeakSet[Engine] = weakref.WeakSet()

    def dispose_with_app(self, engine: AnyEngine) -> None:
        """Dispose *engine*, one the app's session factories reach, on the loop it lives on.

        An async engine's connections belong to the app's loop: a Flask app's shared loop
        disposes it at exit, a Quart app after serving. A sync engine is left to its owner.
        """
        if isinstance(engine, AsyncEngine):
            if self._is_quart:
                self._reached.add(engine.sync_engine)
            else:
                runner.dispose_at_exit(engine)

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
                    # Reading a committed object's attribute must not lazy-load: that is
                    # implicit I/O, which raises in async code (MissingGreenlet).
                    options = {"expire_on_commit": False, **session_options}
                    factory = async_sessionmaker(bind=engine, **options)
                else:
                    factory = sessionmaker(bind=engine, **session_options)
                app = self._app()
                if app is not None:
                    track_changes(app, factory)  # the model signals, if the app opted in
                self._factories[key] = factory
            return factory

    def engine(self, name: str, is_async: bool) -> Engine | AsyncEngine:
        """The engine *name*, the one this app's session factories use, made on first use."""
        with self._lock:
            return self._engine(name, is_async)

    def _engine(self, name: str, is_async: bool) -> AnyEngine:
        engine = self._engines.get((name, is_async))
        if engine is None:
            app = self._app()
            if app is None:  # pragma: no cover - the app owns this object
                raise RuntimeError("The app of these engines no longer exists.")
            engine = create_configured_engine(app.config, name, is_async)
            take_charge(engine)
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
        """Dispose every engine made so far (later use makes them again from the config), and
        the async engines the app's own session factories reach (Quart, after serving)."""
        with self._lock:
            engines = [*self._engines.values(), *map(AsyncEngine, self._reached)]
            self._engines.clear()
            self._factories.clear()
        for engine in engines:
            if isinstance(engine, AsyncEngine):
                await engine.dispose()
            else:
                engine.dispose()
