"""``EngineRegistry``: engines and scoped sessions per key (a URL or a tenant), LRU-bounded."""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import typing as t
import weakref
from dataclasses import dataclass, field

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.orm import sessionmaker

from ._app import ensure_state, register, unregister, use_shared_loop
from ._async import async_scoped_session
from ._changes import track_changes
from ._close import logger
from ._commit import commit_on_success
from ._disposal import LoopDisposals
from ._engines import take_charge
from ._frameworks import current_app_context
from ._runner import runner
from ._sa_asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from ._sync import flask_scoped_session

if t.TYPE_CHECKING:
    from flask.sansio.app import App
    from quart import Quart

    from ._context import ContextRegistry

AnyScoped = flask_scoped_session[t.Any] | async_scoped_session[t.Any]


@dataclass(eq=False)
class _Entry:
    key: str
    label: str
    engine: Engine | AsyncEngine
    scoped: AnyScoped
    #: The event loop an async engine's sessions were handed out on (its connections' loop),
    #: in the process *pid* (a forked child forgets its parent's loop).
    loop: asyncio.AbstractEventLoop | None = None
    pid: int = 0
    #: Checked-out connections, counted here when the pool does not count them itself.
    _checkouts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # A NullPool (which SQLAlchemy < 2.0.38 gives aiosqlite file databases) or a
        # StaticPool has no checkedout(): count the connections through the pool events.
        if not hasattr(self._sync_engine().pool, "checkedout"):
            engine = self._sync_engine()
            event.listen(engine, "checkout", self._checked_out)
            event.listen(engine, "checkin", self._given_back)
            event.listen(engine, "detach", self._given_back)

    def _sync_engine(self) -> Engine:
        return self.engine.sync_engine if isinstance(self.engine, AsyncEngine) else self.engine

    def _checked_out(self, *args: object) -> None:
        with self._lock:
            self._checkouts += 1

    def _given_back(self, *args: object) -> None:
        with self._lock:
            self._checkouts -= 1

    def in_use(self) -> bool:
        """Whether a session of this entry is still open somewhere, or holds a connection."""
        if len(self.scoped.registry) > 0 or self.scoped.fresh_open > 0:
            return True
        pool = self._sync_engine().pool
        if hasattr(pool, "checkedout"):
            return t.cast(int, pool.checkedout()) > 0
        return self._checkouts > 0


class EngineRegistry:
    """Engines made on demand per key, each with its own scoped session, at most *max_engines*.

    The key is a database URL, or, with *url_for*, any key (a tenant id) that *url_for*
    turns into a URL. ``registry[key]`` is that key's scoped session (sync or async by
    *is_async*), scoped to the app context like any other and torn down with it, so a
    request for one tenant can never be handed another tenant's session. Called inside an
    app context, ``registry[key]`` opens the context's session right away, so the engine
    cannot be disposed before the context ends: call it in each context rather than keeping
    the scoped session it returns.

    Past *max_engines*, the least recently used key is evicted: its engine is disposed as
    soon as none of its sessions is open and no connection is checked out (at once if that
    is already so, otherwise by a later ``registry[key]`` or :meth:`reap`); an async engine
    is disposed on the event loop its sessions were used on. Asking again for an evicted key
    whose engine is still busy brings that engine back. Concurrent first requests for one
    key make one engine. URLs appear in reprs, logs and errors only with the password hidden.

    :param url_for: turns a key into a database URL; by default the key is the URL.
    :param is_async: make ``AsyncEngine`` / ``async_scoped_session`` instead of sync ones.
    :param max_engines: how many engines may exist at once, not counting busy evicted ones.
    :param engine_options: keyword arguments for ``create_engine`` / ``create_async_engine``.
    :param session_options: keyword arguments for the session factory; an async one
        defaults to ``expire_on_commit=False``, as a factory made from the config does.
    :param commit_on_success: commit the context's sessions of this registry after a view
        returned a response below 400, as the scoped sessions' option does.
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
        commit_on_success: bool = False,
        app: App | None = None,
    ) -> None:
        if max_engines < 1:
            raise ValueError(f"max_engines must be at least 1, not {max_engines!r}.")
        self._url_for = url_for
        self.is_async = is_async
        self.max_engines = max_engines
        self._engine_options = dict(engine_options or {})
        self._session_options = dict(session_options or {})
        self.commit_on_success = commit_on_success
        self._apps: weakref.WeakSet[App] = weakref.WeakSet()
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._retired: list[_Entry] = []
        self._lock = threading.RLock()
        self._disposals = LoopDisposals()
        #: How many engines were made and disposed so far.
        self.created: int = 0
        self.disposed: int = 0
        if app is not None:
            self.init_app(app)

    def init_app(self, app: App) -> None:
        """Scope this registry's sessions to *app*'s contexts too.

        A Quart app also awaits :meth:`aclose` after serving.
        """
        with self._lock:
            if app in self._apps:  # already: its engines are attached as they are made
                return
            state = ensure_state(app)  # now: Flask refuses a teardown once serving
            if state.is_quart:
                t.cast("Quart", app).after_serving(self.aclose)
            elif self.is_async:  # as async_scoped_session.init_app does
                use_shared_loop(app, state, True)
            self._apps.add(app)
            for entry in [*self._entries.values(), *self._retired]:
                self._attach(entry, app)
            if self.commit_on_success:  # one hook for the engines to come as well
                commit_on_success(app, self._registries)

    def _registries(self) -> list[ContextRegistry[t.Any]]:
        """The context registries of the engines that exist (evicted busy ones included)."""
        with self._lock:
            return [entry.scoped.registry for entry in (*self._entries.values(), *self._retired)]

    def _attach(self, entry: _Entry, app: App) -> None:
        """Scope *entry*'s sessions to *app*, never as its default or a named session."""
        state = register(app, entry.scoped, named=False)
        track_changes(app, entry.scoped.session_factory)  # the model signals, if opted in
        if isinstance(entry.engine, AsyncEngine) and not state.is_quart:
            runner.dispose_at_exit(entry.engine)

    def __getitem__(self, key: str) -> AnyScoped:
        """The scoped session for *key*, making its engine on first use."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            else:
                entry = self._revive(key) or self._make(key)
                self._entries[key] = entry
                while len(self._entries) > self.max_engines:
                    _, evicted = self._entries.popitem(last=False)
                    self._retired.append(evicted)
            self._pin(entry)
            free = self._take_free()
        self._dispose(free)
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
        with self._lock:
            labels = ", ".join(entry.label for entry in self._entries.values())
            return f"<EngineRegistry {len(self._entries)}/{self.max_engines} [{labels}]>"

    def _make(self, key: str) -> _Entry:
        url = make_url(self._url_for(key) if self._url_for is not None else key)
        label = key if self._url_for is not None else url.render_as_string(hide_password=True)
        engine: Engine | AsyncEngine
        scoped: AnyScoped
        if self.is_async:
            engine = create_async_engine(url, **self._engine_options)
            options = {"expire_on_commit": False, **self._session_options}  # as from config
            scoped = async_scoped_session(async_sessionmaker(engine, **options), name=label)
        else:
            engine = create_engine(url, **self._engine_options)
            scoped = flask_scoped_session(sessionmaker(engine, **self._session_options), name=label)
        take_charge(engine)
        entry = _Entry(key, label, engine, scoped)
        for app in self._apps:
            self._attach(entry, app)
        self.created += 1
        return entry

    def _revive(self, key: str) -> _Entry | None:
        """The evicted, still busy entry for *key*, taken back: one engine per key at most."""
        for entry in self._retired:
            if entry.key == key:
                self._retired.remove(entry)
                return entry
        return None

    def _pin(self, entry: _Entry) -> None:
        """Open the current context's session of *entry*, so that eviction waits for it.

        Otherwise another thread could evict and dispose the engine between
        ``registry[key]`` and the first use of the scoped session it returned.
        """
        ctx = current_app_context()
        if ctx is None or ctx.app not in self._apps:
            return
        pid = os.getpid()
        if isinstance(entry.engine, AsyncEngine) and (entry.loop is None or entry.pid != pid):
            entry.loop, entry.pid = asyncio._get_running_loop(), pid
        try:
            entry.scoped.registry()
        except RuntimeError:
            pass  # a context being torn down: using the session raises this error itself

    def _take_free(self) -> list[_Entry]:
        """Take the evicted entries nothing uses any more out of the registry and the apps."""
        free = [entry for entry in self._retired if not entry.in_use()]
        for entry in free:
            self._retired.remove(entry)
            for app in self._apps:
                unregister(app, entry.scoped)
        return free

    def _dispose(self, entries: list[_Entry]) -> None:
        """Dispose the engines of *entries*, outside the lock (closing connections is I/O)."""
        for entry in entries:
            if isinstance(entry.engine, AsyncEngine):
                # A loop of the parent process never runs here: the engine's pool in this
                # child is its own (see take_charge), with nothing of the parent's to close.
                loop = entry.loop if entry.pid == os.getpid() else None
                self._disposals.dispose(entry.engine, loop)
            else:
                entry.engine.dispose()
            with self._lock:
                self.disposed += 1
            logger.debug("Disposed the engine of %s (evicted).", entry.label)

    def reap(self) -> int:
        """Dispose what eviction left busy and is free now; return how many remain busy."""
        with self._lock:
            free = self._take_free()
            busy = len(self._retired)
        self._dispose(free)
        return busy

    def close(self) -> None:
        """Evict every key: dispose the engines not in use now, the others once free.

        The registry stays usable; a later ``registry[key]`` makes a new engine. Async
        engines are disposed on their event loop without waiting; :meth:`aclose` waits.
        """
        with self._lock:
            self._retired.extend(self._entries.values())
            self._entries.clear()
            free = self._take_free()
        self._dispose(free)

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the disposals it started on the running loop."""
        self.close()
        pending = self._disposals.pending_on(asyncio.get_running_loop())
        if pending:
            await asyncio.wait(pending)
