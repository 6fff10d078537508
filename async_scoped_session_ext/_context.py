"""The core: each app context's record of the sessions it opened, and its registry.

Records are kept by the context object (not its ``g``, which Quart's context copies
share), in a dictionary keyed by its ``id()`` beside a weak reference to it, whose callback
drops the entry when the context is gone, before its ``id()`` can be reused: as a
:class:`weakref.WeakKeyDictionary` would, with one dictionary lookup per session access
instead of a Python call. A context that is never torn down takes its record with it when
it is garbage-collected, and its sessions are then closed, with a ``ResourceWarning`` that
names the missed teardown. For that, nothing in a record may reach back to its context:
async engines open their connections outside the request's context variables
(``_connect``). Framework-free: the adapters (``_frameworks``) find the current context,
and the teardown (``_teardown``) ends its record.
"""

from __future__ import annotations

import asyncio
import contextvars
import typing as t
import warnings
import weakref

from sqlalchemy.util import ScopedRegistry

from ._close import close_sync_then_async

if t.TYPE_CHECKING:
    from ._types import ScopedLike

_T = t.TypeVar("_T")


NO_APP_CONTEXT_MESSAGE = """\
Working outside of application context.

This code tried to use a scoped SQLAlchemy session, which lives as long as the current
Flask or Quart application context, but no application context is pushed. To solve this,
set up an app context using 'with app.app_context()' (Flask) or
'async with app.app_context()' (Quart), or run the code inside a request, a CLI command or
'flask shell' / 'quart shell'.\
"""

TORN_DOWN_MESSAGE = (
    "The app context {ctx!r} is torn down (or being torn down), but this code still runs in it"
    " and asks for a new session, which nothing would ever close: a task started with"
    " asyncio.gather() or asyncio.create_task() (or a thread) outlives its request, or the"
    " context object was pushed again in another thread or task. Give such code a session"
    " of its own: 'async with scoped.fresh() as session:' (or 'with scoped.fresh() as"
    " session:'), or push a new app context there."
)


class AppContextLike(t.Protocol):
    """What the core needs of a Flask or Quart ``AppContext``."""

    @property
    def app(self) -> t.Any: ...


class ContextRecord:
    """The sessions one app context opened, and whether its teardown has begun."""

    __slots__ = ("sessions", "torn_down", "failed", "loop", "app", "queries", "__weakref__")

    def __init__(self, context: AppContextLike) -> None:
        #: Each scoped session's registry, with the session it opened in this context.
        self.sessions: dict[ContextRegistry[t.Any], t.Any] = {}
        #: Set by the teardown; cleared when the context, pushed again where it was torn
        #: down (Flask 3.1's ``stream_with_context`` does that), opens a session.
        self.torn_down = False
        #: Set when the context's request or websocket raised (Quart reports it by signal:
        #: its teardown gets no exception once an error handler made a response).
        self.failed = False
        #: The event loop the context's async sessions run on (to close them after a
        #: missed teardown).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: For the warning after a missed teardown, when the context itself is gone.
        self.app: t.Any = context.app
        #: The statements recorded in the context (``record_queries``), made on the first.
        self.queries: list[t.Any] | None = None

    def take(self, *, only_async: bool = False) -> list[tuple[ScopedLike, t.Any]]:
        """Remove and return the sessions (only those of async scoped sessions, if asked)."""
        taken = []
        for registry in list(self.sessions):
            if only_async and not registry.owner.is_async:
                continue
            taken.append((registry.owner, self.sessions.pop(registry)))
            registry.holders.discard(id(self))
        return taken

    def holds(self, scoped: ScopedLike) -> bool:
        """Whether the context has a session of *scoped*."""
        return any(registry.owner is scoped for registry in self.sessions)

    def __del__(self) -> None:
        if self.sessions:  # the context went away without its teardown
            _reclaim(self)


_Entry: t.TypeAlias = "tuple[weakref.ref[AppContextLike], ContextRecord]"
#: Each app context's record, by the context's ``id()``, beside a weak reference to it.
_records: dict[int, _Entry] = {}


def record_of(ctx: AppContextLike) -> ContextRecord | None:
    """The record of *ctx*, or ``None`` if it has none yet."""
    entry = _records.get(id(ctx))
    return entry[1] if entry is not None and entry[0]() is ctx else None


def ensure_record(ctx: AppContextLike) -> ContextRecord:
    """The record of *ctx*, made on first use."""
    key = id(ctx)
    entry = _records.get(key)
    if entry is not None and entry[0]() is ctx:
        return entry[1]
    made: _Entry = (weakref.ref(ctx, lambda ref: _forget(key, ref)), ContextRecord(ctx))
    if entry is None:
        return _records.setdefault(key, made)[1]  # another thread may have made it first
    # The entry of a context that is gone (its callback drops it first: this is a guard).
    _records[key] = made
    return made[1]


def _forget(key: int, ref: weakref.ref[AppContextLike]) -> None:
    """The context of *ref* is gone: drop its entry (its record then closes what is left)."""
    entry = _records.get(key)
    if entry is not None and entry[0] is ref:
        del _records[key]


#: The app context last torn down in this ``contextvars`` context (thread or task), weakly.
#: Only there may that app context be pushed again and open sessions; a copy of the request's
#: variables made before the teardown (a task or thread outliving the request) never has it.
_torn_down_here: contextvars.ContextVar[weakref.ref[AppContextLike] | None] = (
    contextvars.ContextVar("async_scoped_session_ext.torn_down_here", default=None)
)


def mark_torn_down(record: ContextRecord, ctx: AppContextLike) -> None:
    """*ctx* is being torn down: refuse new sessions, except after a push where it ended."""
    record.torn_down = True
    _torn_down_here.set(weakref.ref(ctx))


def _pushed_again_here(ctx: AppContextLike) -> bool:
    """Whether torn-down *ctx* is current where it was torn down: so it was pushed again."""
    mark = _torn_down_here.get()
    return mark is not None and mark() is ctx


class ContextRegistry(ScopedRegistry[_T]):
    """One scoped session's sessions, each kept in the record of the context it belongs to.

    A :class:`~sqlalchemy.util.ScopedRegistry` as SQLAlchemy's ``scoped_session`` uses it.
    *current* returns the current context or ``None``; *on_new_scope* is called with the
    context before a session is made for it, and may refuse by raising.
    """

    __slots__ = ("owner", "current", "on_new_scope", "holders")

    owner: ScopedLike
    current: t.Callable[[], AppContextLike | None]
    on_new_scope: t.Callable[[AppContextLike], None]
    holders: set[int]

    def __init__(
        self,
        owner: ScopedLike,
        createfunc: t.Callable[[], _T],
        current: t.Callable[[], AppContextLike | None],
        on_new_scope: t.Callable[[AppContextLike], None],
    ) -> None:
        super().__init__(createfunc, self._scope)
        self.owner = owner
        self.current = current
        self.on_new_scope = on_new_scope
        #: The ids of the records that hold a session of this registry (ids, not the records:
        #: a record goes with its context, and is taken out before it is gone).
        self.holders = set()

    def _scope(self) -> AppContextLike:
        ctx = self.current()
        if ctx is None:
            raise RuntimeError(NO_APP_CONTEXT_MESSAGE)
        return ctx

    def __call__(self) -> _T:
        ctx = self.current()
        if ctx is None:
            raise RuntimeError(NO_APP_CONTEXT_MESSAGE)
        entry = _records.get(id(ctx))
        if entry is not None and entry[0]() is ctx:
            session: _T | None = entry[1].sessions.get(self)
            if session is not None:
                return session
        return self._store(ctx, None)

    def _store(self, ctx: AppContextLike, given: _T | None) -> _T:
        """Store *given* (or a new session) for *ctx*, after the checks."""
        self.on_new_scope(ctx)
        record = ensure_record(ctx)
        if record.torn_down:
            if not _pushed_again_here(ctx):
                raise RuntimeError(TORN_DOWN_MESSAGE.format(ctx=ctx))
            record.torn_down = False
        session = self.createfunc() if given is None else given
        if self.owner.is_async and record.loop is None:
            record.loop = asyncio.get_running_loop()  # async sessions are made in async code
        stored: _T = record.sessions.setdefault(self, session)
        self.holders.add(id(record))
        return stored

    def has(self) -> bool:
        """Whether the current context has a session; ``False`` outside any context."""
        ctx = self.current()
        record = record_of(ctx) if ctx is not None else None
        return record is not None and self in record.sessions

    def set(self, obj: _T) -> None:
        """Store *obj* as the current context's session."""
        self._store(self._scope(), obj)

    def clear(self) -> None:
        """Forget the current context's session without closing it (SQLAlchemy's API)."""
        self.pop()

    def pop(self) -> _T | None:
        """Remove and return the current context's session; ``None`` if none (or no context)."""
        ctx = self.current()
        record = record_of(ctx) if ctx is not None else None
        if record is None:
            return None
        session: _T | None = record.sessions.pop(self, None)
        self.holders.discard(id(record))
        return session

    def __len__(self) -> int:
        """How many contexts hold a session of this registry now."""
        return len(self.holders)


# -- a context that went away without its teardown ------------------------------------------

_reclaiming: set[asyncio.Task[None]] = set()


def _reclaim(record: ContextRecord) -> None:
    """Close the sessions of a context that was garbage-collected without its teardown."""
    taken = record.take()
    owners = ", ".join(repr(scoped) for scoped, _ in taken)
    try:
        warnings.warn(
            f"An app context of the app {getattr(record.app, 'name', '?')!r} was never torn"
            " down (pushed without being popped, or a teardown function of the app raised"
            f" before the library's teardown ran), so its sessions of {owners} were left"
            " open; they are closed now that the context was garbage-collected. Pop every"
            " context you push: 'with app.app_context():' (Flask) or"
            " 'async with app.app_context():' (Quart).",
            ResourceWarning,
            stacklevel=1,
        )
    finally:
        pending = close_sync_then_async(taken)
        if pending is not None:
            loop = record.loop
            try:
                if loop is None or loop.is_closed():
                    raise RuntimeError("the event loop is closed")
                loop.call_soon_threadsafe(_start, pending)
            except RuntimeError:
                pending.close()  # SQLAlchemy terminates what cannot be closed on its loop


def _start(coro: t.Coroutine[t.Any, t.Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _reclaiming.add(task)
    task.add_done_callback(_reclaiming.discard)
