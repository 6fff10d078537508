"""``EngineRegistry``: engines and scoped sessions per key (a URL or a tenant), LRU-bounded."""

from __future__ import annotations

import asyncio
import collections
import threading
import typing as t
import weakref
from dataclasses import dataclass

from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from ._app import unregister
from ._async import async_scoped_session
from ._engines import guard_fork
from ._runner import runner
from ._sync import flask_scoped_session
from ._teardown import logger

if t.TYPE_CHECKING:
    from flask.sansio.app import App

AnyScoped = flask_scoped_session[t.Any] | async_scoped_session[t.Any]


@dataclass(eq=False)
class _Entry:
    key: str
    label: str
    engine: Engine | AsyncEngine
    scoped: AnyScoped

    def in_use(self) -> bool:
        """Whether a session of this entry is still open somewhere, or holds a connection."""
        pool = (
            self.engine.sync_engine.pool
            if isinstance(self.engine, AsyncEngine)
            else self.engine.pool
        )
        return len(self.scoped.registry) > 0 or pool.checkedout() > 0  # type: ignore[attr-defined]


class EngineRegistry:
    """Engines made on demand per key, each with its own scoped session, at most *max_engines*.

    The key is a database URL, or, with *url_for*, any key (a tenant id) that *url_for*
    turns into a URL. ``registry[key]`` is that key's scoped session (sync or async by
    *is_async*), scoped to the app context like any other and torn down with it, so a
    request for one tenant can never be handed another tenant's session.

    Past *max_engines*, the least recently used key is evicted: its engine is disposed as
    soon as none of its sessions is open and no connection is checked out (at once if that
    is already so, later otherwise); an async engine is disposed on the event loop that uses
    it. Concurrent first requests for one key make one engine. URLs appear in reprs, logs and
    errors only with the password hidden.

    :param url_for: turns a key into a database URL; by default the key is the URL.
    :param is_async: make ``AsyncEngine`` / ``async_scoped_session`` instead of sync ones.
    :param max_engines: how many engines may exist at once.
    :param engine_options: keyword arguments for ``create_engine`` / ``create_async_engine``.
    :param session_options: keyword arguments for the session factory.
    :param app: an app to initialise, as with :meth:`init_app`.
    """

    def __init__(
        self,
        url_for: t.Callable[[str], str | URL] | None = None,
        *,
        is_async: bool = False,
        max_engines: int = 8,
        engine_options: t.Mapping[str, t.Any] | None = None,
        session_options: t.Mapping[str, t.Any] | None = None,
        app: App | None = None,
    ) -> None:
        if max_engines < 1:
            raise ValueError(f"max_engines must be at least 1, not {max_engines!r}.")
        self._url_for = url_for
        self.is_async = is_async
        self.max_engines = max_engines
        self._engine_options = dict(engine_options or {})
        self._session_options = dict(session_options or {})
        self._apps: weakref.WeakSet[App] = weakref.WeakSet()
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._retired: list[_Entry] = []
        self._lock = threading.RLock()
        self._disposals: set[asyncio.Task[None]] = set()
        #: How many engines were made and disposed so far.
        self.created = self.disposed = 0
        if app is not None:
            self.init_app(app)

    def init_app(self, app: App) -> None:
        """Scope this registry's sessions to *app*'s contexts too."""
        with self._lock:
            self._apps.add(app)
            for entry in [*self._entries.values(), *self._retired]:
                entry.scoped.init_app(app)

    def __getitem__(self, key: str) -> AnyScoped:
        """The scoped session for *key*, making its engine on first use."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry.scoped
            entry = self._make(key)
            self._entries[key] = entry
            while len(self._entries) > self.max_engines:
                _, evicted = self._entries.popitem(last=False)
                self._retired.append(evicted)
            self._reap()
            return entry.scoped

    def __len__(self) -> int:
        """How many engines are in use: the registered ones plus evicted ones still busy."""
        with self._lock:
            return len(self._entries) + len(self._retired)

    def keys(self) -> list[str]:
        """The registered keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __repr__(self) -> str:
        labels = ", ".join(entry.label for entry in self._entries.values())
        return f"<EngineRegistry {len(self._entries)}/{self.max_engines} [{labels}]>"

    def _make(self, key: str) -> _Entry:
        url = make_url(self._url_for(key) if self._url_for is not None else key)
        label = key if self._url_for is not None else url.render_as_string(hide_password=True)
        engine: Engine | AsyncEngine
        scoped: AnyScoped
        if self.is_async:
            engine = create_async_engine(url, **self._engine_options)
            scoped = async_scoped_session(
                async_sessionmaker(engine, **self._session_options), name=label
            )
        else:
            engine = create_engine(url, **self._engine_options)
            scoped = flask_scoped_session(sessionmaker(engine, **self._session_options), name=label)
        guard_fork(engine)
        for app in self._apps:
            scoped.init_app(app)
        self.created += 1
        return _Entry(key, label, engine, scoped)

    def _reap(self) -> None:
        """Dispose the evicted engines that nothing uses any more."""
        for entry in list(self._retired):
            if entry.in_use():
                continue
            if isinstance(entry.engine, AsyncEngine) and not self._dispose_async(entry.engine):
                continue  # no loop to dispose it on yet: try again on a later call
            self._retired.remove(entry)
            for app in self._apps:
                unregister(app, entry.scoped)
            if isinstance(entry.engine, Engine):
                entry.engine.dispose()
            self.disposed += 1
            logger.debug("Disposed the engine of %s (evicted).", entry.label)

    def _dispose_async(self, engine: AsyncEngine) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if runner.is_loop_thread() or not runner.started:
                return False
            runner.run_soon(engine.dispose())
            return True
        task = loop.create_task(engine.dispose())
        self._disposals.add(task)
        task.add_done_callback(self._disposals.discard)
        return True

    def reap(self) -> int:
        """Dispose what eviction left busy and is free now; return how many remain busy."""
        with self._lock:
            self._reap()
            return len(self._retired)
