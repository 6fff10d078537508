"""Recorded queries: each statement of the current app context, for debugging.

With ``app.config["SQLALCHEMY_RECORD_QUERIES"] = True`` (Flask-SQLAlchemy's key; off by
default), every statement run inside an app context of the app, through an engine of its
scoped sessions, is recorded on that context: its SQL, its parameters, when it started and
ended, and the line of your code that ran it. :func:`get_recorded_queries` returns the
current context's list (a request's queries, in a request), as Flask-SQLAlchemy 3.1's
``flask_sqlalchemy.record_queries.get_recorded_queries`` does, for sync and async engines,
in Flask and Quart. The debug toolbar panel (``async_scoped_session_ext.debugtoolbar``)
shows them.

While the setting is off, nothing listens: engine events are added to an engine only once
an app that uses it has the setting on (at the first session that app opens afterwards),
and each statement then checks the setting of the current context's app, so an app that
shares the engine with recording off records nothing. The queries are kept with the
context, beside its sessions, so two concurrent requests never see each other's, and they
go away with the context.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import typing as t
import weakref
from time import perf_counter

from sqlalchemy import Engine, event

from ._context import ensure_record, record_of
from ._engines import engines_of
from ._frameworks import current_app_context
from ._sa_asyncio import AsyncEngine

if t.TYPE_CHECKING:
    from types import FrameType

    from ._app import AppState
    from ._types import AnyEngine, ScopedLike

__all__ = ["RECORD_QUERIES_KEY", "QueryInfo", "get_recorded_queries"]

#: The config key that turns recording on for an app (``False`` when missing).
RECORD_QUERIES_KEY = "SQLALCHEMY_RECORD_QUERIES"


@dataclasses.dataclass(frozen=True, slots=True)
class QueryInfo:
    """One recorded statement. Returned by :func:`get_recorded_queries`.

    The fields are those of Flask-SQLAlchemy 3.1's query info, so code and tools written
    for it (a debug toolbar panel, a test that counts queries) read these the same way.
    """

    #: The SQL sent to the driver, with the driver's parameter placeholders.
    statement: str
    #: The parameters sent with it, as the driver got them: a tuple or a dict, or a list of
    #: them for an ``executemany``.
    parameters: t.Any
    #: When the statement was sent, from :func:`time.perf_counter` (seconds, comparable
    #: within the process only).
    start_time: float
    #: When the driver returned, from :func:`time.perf_counter`.
    end_time: float
    #: Where your code ran it: ``"path/to/file.py:42 (view_name)"``, the first frame
    #: outside SQLAlchemy, this library, asyncio, greenlet and the web framework;
    #: ``"<unknown>"`` when there is none. For display: the format is not stable.
    location: str

    @property
    def duration(self) -> float:
        """How long the statement took, in seconds."""
        return self.end_time - self.start_time


def get_recorded_queries() -> list[QueryInfo]:
    """The statements recorded in the current app context so far, oldest first.

    Empty outside an app context, and when the app's ``SQLALCHEMY_RECORD_QUERIES`` is off.
    The list is a copy: later statements do not change it.
    """
    ctx = current_app_context()
    record = record_of(ctx) if ctx is not None else None
    if record is None or record.queries is None:
        return []
    return list(record.queries)


# -- listening -------------------------------------------------------------------------------

#: The sync cores of the engines listened to (held weakly: they are the user's or the app's).
_listened: weakref.WeakSet[Engine] = weakref.WeakSet()
_listening = threading.Lock()
#: Where a statement's start time is kept on its execution context.
_STARTED = "_async_scoped_session_ext_started"


def _watch_if_recording(scoped: ScopedLike, app: t.Any, state: AppState) -> None:
    """:func:`_watch` *scoped*'s engines if *app* records queries (one look-up if not)."""
    if app.config.get(RECORD_QUERIES_KEY, False):
        _watch(scoped, state)


def _watch(scoped: ScopedLike, state: AppState) -> None:
    """Listen to every engine *scoped*'s sessions use in the app of *state* (recording is on).

    Called before each new session of an app with the setting on (``_misuse``, and
    ``fresh()``); the listeners are added once per engine. These are the app's real
    engines, also while a test isolates the app (``testing.isolate`` binds its sessions to
    connections of these same engines).
    """
    factory: object = scoped.given_factory
    if factory is None:
        factory = state.engines.factory(scoped.name, scoped.is_async, scoped.session_options)
    for engine in engines_of(factory):
        _listen(engine)


def _listen(engine: AnyEngine) -> None:
    """Record the statements *engine* runs in contexts of apps with the setting on."""
    core = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    with _listening:  # two first sessions at once add the listeners once
        if core not in _listened:
            event.listen(core, "before_cursor_execute", _started)
            event.listen(core, "after_cursor_execute", _finished)
            _listened.add(core)


def _recording_context() -> t.Any:
    """The current app context, if its app records queries; else ``None``."""
    ctx = current_app_context()
    if ctx is None or not ctx.app.config.get(RECORD_QUERIES_KEY, False):
        return None
    return ctx


def _started(
    conn: object, cursor: object, statement: str, parameters: t.Any, context: t.Any, many: bool
) -> None:
    if context is not None and _recording_context() is not None:
        setattr(context, _STARTED, perf_counter())


def _finished(
    conn: object, cursor: object, statement: str, parameters: t.Any, context: t.Any, many: bool
) -> None:
    end = perf_counter()
    start: float | None = getattr(context, _STARTED, None)
    ctx = _recording_context() if start is not None else None
    if ctx is None:
        return
    delattr(context, _STARTED)
    record = ensure_record(ctx)
    queries = record.queries
    if queries is None:
        with _listening:  # threads that share the context (copy_current_request_context)
            queries = record.queries = [] if record.queries is None else record.queries
    queries.append(QueryInfo(statement, parameters, t.cast(float, start), end, _location()))


# -- the caller's location -------------------------------------------------------------------

#: The top-level modules whose frames are never "your code": the libraries a statement
#: passes through, then the servers and the standard library's thread and task machinery
#: (reached only when no frame of yours is on the stack).
_SKIPPED = frozenset(
    {
        "sqlalchemy",
        "async_scoped_session_ext",
        "asyncio",
        "greenlet",
        "flask",
        "quart",
        "werkzeug",
        "asgiref",
        "flask_debugtoolbar",
        "contextlib",
        "concurrent",
        "threading",
        "socketserver",
        "hypercorn",
        "uvicorn",
        "gunicorn",
        "gevent",
    }
)


def _location() -> str:
    """``file:line (function)`` of the innermost frame of the caller's own code.

    An async engine runs the statement in a greenlet whose stack ends in SQLAlchemy; the
    code that awaited it is on the stack of the greenlet that started it (its parent),
    suspended where it switched: that stack is searched next.
    """
    found = _user_frame(sys._getframe(1))
    if found is None:
        greenlet = sys.modules.get("greenlet")
        current = greenlet.getcurrent() if greenlet is not None else None
        parent = current.parent if current is not None else None
        while found is None and parent is not None:
            found = _user_frame(parent.gr_frame)
            parent = parent.parent
    if found is None:
        return "<unknown>"
    code = found.f_code
    return f"{code.co_filename}:{found.f_lineno} ({code.co_name})"


def _user_frame(frame: FrameType | None) -> FrameType | None:
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if name.partition(".")[0] not in _SKIPPED:
            return frame
        frame = frame.f_back
    return None
