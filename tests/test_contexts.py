"""Which code gets which session: copied contexts, background tasks, threads, streams, websockets.

Every app context has its own session, closed at its teardown. These tests pin down which
context (so which session) each framework gives to code that runs beside or after a request,
and that the session is closed when that code ends, on SQLite and PostgreSQL. The table in
docs/contexts.md is made of these results.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import contextvars
import logging
import threading
import time
import typing as t
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import click
import httpx
import pytest
from flask import Flask, Response, copy_current_request_context
from flask import stream_with_context as flask_stream_with_context
from flask.signals import appcontext_popped
from sqlalchemy import Engine, func, select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import DetachedInstanceError
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Request, TextMessage

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session
from async_scoped_session_ext._frameworks import current_app_context

from .support.databases import database_url, engine_on_shared_loop
from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo
from .support.servers import serving_asgi, serving_wsgi

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart, copy_current_app_context, websocket
    from quart import copy_current_request_context as quart_copy_current_request_context
    from quart import stream_with_context as quart_stream_with_context

TIMEOUT = 10.0  # seconds any single wait may take
FLASK_VERSION = tuple(int(part) for part in version("flask").split(".")[:2])
flask_31_streaming = pytest.mark.skipif(
    FLASK_VERSION != (3, 1),
    reason="Flask 3.1's streaming: before 3.1 (and from 3.2) the view's context stays pushed"
    " until the body ends, so there is one teardown, after streaming",
)
flask_30_streaming = pytest.mark.skipif(  # Flask 3.2 went back to Flask 3.0's streaming
    FLASK_VERSION == (3, 1),
    reason="Flask's streaming before 3.1 and from 3.2: Flask 3.1 tears the view's context down"
    " before the body",
)


# --- helpers -------------------------------------------------------------------------------


@dataclass
class Teardown:
    """One run of the app's teardown: the context, the exception it got, the thread."""

    ctx: object
    exc: BaseException | None
    thread: int
    checked_out: int
    registered: int


@dataclass
class Teardowns:
    """Every teardown of an app, recorded *after* the library's own teardown has run."""

    calls: list[Teardown] = field(default_factory=list)

    def of(self, ctx: object) -> list[Teardown]:
        """The teardowns of *ctx* (compared by identity)."""
        return [call for call in self.calls if call.ctx is ctx]


_pending: contextvars.ContextVar[Teardown | None] = contextvars.ContextVar("_pending", default=None)


def record_teardowns(
    app: Flask | Quart,
    teardowns: Teardowns,
    engine: Engine | AsyncEngine,
    registry: t.Callable[[], int],
) -> None:
    """Record each teardown of *app*: its context, exception and thread, and the pool state
    once the library's teardown has run too.

    The library closes the sessions on ``appcontext_tearing_down``, after every teardown
    function; ``appcontext_popped`` comes after that, in the same thread or task.
    """

    def started(exc: BaseException | None) -> None:
        call = Teardown(current_app_context(), exc, threading.get_ident(), -1, -1)
        teardowns.calls.append(call)
        _pending.set(call)

    def finished() -> None:
        call = _pending.get()
        if call is not None:
            call.checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
            call.registered = registry()
            _pending.set(None)

    if HAS_QUART and isinstance(app, Quart):
        from quart.signals import appcontext_popped as quart_popped

        async def started_async(exc: BaseException | None) -> None:
            started(exc)

        async def finished_async(sender: Quart, **kwargs: object) -> None:
            finished()

        app.teardown_appcontext(started_async)
        quart_popped.connect(finished_async, app, weak=False)
        return

    def finished_sync(sender: Flask, **kwargs: object) -> None:
        finished()

    app.teardown_appcontext(started)
    appcontext_popped.connect(finished_sync, app, weak=False)


async def eventually(check: t.Callable[[], bool], what: str) -> None:
    """Wait (at most ``TIMEOUT`` seconds) until *check* holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


def eventually_sync(check: t.Callable[[], bool], what: str) -> None:
    """Wait (at most ``TIMEOUT`` seconds) until *check* holds, in sync code."""
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


async def count_todos_async(engine: AsyncEngine) -> int:
    async with AsyncSession(engine) as session:
        return await session.scalar(select(func.count()).select_from(Todo)) or 0


def count_todos(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Todo)) or 0


# --- Quart fixtures ------------------------------------------------------------------------


@dataclass
class QuartSetup:
    """A Quart app, its scoped session, and the teardowns seen after the library's."""

    app: Quart
    scoped: async_scoped_session[AsyncSession]
    engine: AsyncEngine
    teardowns: Teardowns

    def clean(self) -> bool:
        """No session registered and no connection checked out."""
        return len(self.scoped.registry) == 0 and self.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.fixture
def quart_setup(async_engine: AsyncEngine) -> QuartSetup:
    """A Quart app whose teardowns are recorded, with the state after the library's."""
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(async_engine), app)
    teardowns = Teardowns()
    record_teardowns(app, teardowns, async_engine, lambda: len(scoped.registry))
    return QuartSetup(app, scoped, async_engine, teardowns)


# --- Quart: background tasks and copied app contexts ---------------------------------------


@needs_quart
async def test_background_task_gets_its_own_session(quart_setup: QuartSetup) -> None:
    """add_background_task runs in a new app context: its own session, closed when it ends."""
    app, engine = quart_setup.app, quart_setup.engine
    seen: dict[str, t.Any] = {}
    finished = asyncio.Event()

    async def task() -> None:
        seen["task_ctx"] = current_app_context()
        seen["task"] = session = current_session()
        session.add(Todo(title="from the background"))
        await current_session.commit()
        await current_session.execute(text("select 1"))  # a transaction left for the teardown
        seen["task_in_transaction"] = session.in_transaction()
        finished.set()

    @app.post("/")
    async def view() -> str:
        seen["view_ctx"] = current_app_context()
        seen["view"] = current_session()
        await current_session.execute(text("select 1"))
        app.add_background_task(task)
        return "ok"

    async with app.test_app() as test_app:
        assert (await test_app.test_client().post("/")).status_code == 200
        await asyncio.wait_for(finished.wait(), TIMEOUT)
        # Closed when the task ended, while the app is still serving.
        await eventually(lambda: not seen["task"].in_transaction(), "the task's session closed")
        await eventually(quart_setup.clean, "no session registered or connection checked out")

    assert seen["task_ctx"] is not seen["view_ctx"]
    assert seen["task"] is not seen["view"]
    assert seen["task_in_transaction"] is True
    assert [call.exc for call in quart_setup.teardowns.of(seen["task_ctx"])] == [None]
    assert [call.exc for call in quart_setup.teardowns.of(seen["view_ctx"])] == [None]
    assert quart_setup.clean()
    assert await count_todos_async(engine) == 1


@needs_quart
async def test_background_task_cancelled_at_shutdown_is_closed(quart_setup: QuartSetup) -> None:
    """A background task still running at shutdown is cancelled; its session is still closed."""
    app, engine = quart_setup.app, quart_setup.engine
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 0.2
    seen: dict[str, t.Any] = {}
    holding = asyncio.Event()

    async def task() -> None:
        seen["task_ctx"] = current_app_context()
        seen["task"] = current_session()
        current_session.add(Todo(title="never committed"))
        await current_session.flush()
        holding.set()
        await asyncio.sleep(30)

    @app.post("/")
    async def view() -> str:
        app.add_background_task(task)
        return "ok"

    async with app.test_app() as test_app:
        assert (await test_app.test_client().post("/")).status_code == 200
        await asyncio.wait_for(holding.wait(), TIMEOUT)
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]

    [torn] = quart_setup.teardowns.of(seen["task_ctx"])
    assert isinstance(torn.exc, asyncio.CancelledError)
    assert (torn.registered, torn.checked_out) == (0, 0)
    assert not seen["task"].in_transaction()
    assert quart_setup.clean()
    assert await count_todos_async(engine) == 0


@needs_quart
async def test_copy_current_app_context_gets_its_own_session(quart_setup: QuartSetup) -> None:
    """A copy_current_app_context task has its own session, closed when the task ends."""
    app, scoped = quart_setup.app, quart_setup.scoped
    seen: dict[str, t.Any] = {}

    async def work() -> None:
        seen["copy_ctx"] = current_app_context()
        seen["copy"] = session = current_session()
        session.add(Todo(title="from the copy"))
        await current_session.commit()
        await current_session.execute(text("select 1"))
        seen["copy_in_transaction"] = session.in_transaction()

    @app.post("/")
    async def view() -> str:
        seen["view_ctx"] = current_app_context()
        seen["view"] = view_session = current_session()
        await current_session.execute(text("select 1"))
        await asyncio.create_task(copy_current_app_context(work)())
        seen["copy_closed_before_view_ended"] = not seen["copy"].in_transaction()
        seen["view_untouched"] = scoped() is view_session and view_session.in_transaction()
        seen["registered_in_view"] = len(scoped.registry)
        return str(await current_session.scalar(select(func.count()).select_from(Todo)))

    response = await app.test_client().post("/")
    assert await response.get_data(as_text=True) == "1"
    assert seen["copy_ctx"] is not seen["view_ctx"]
    assert seen["copy"] is not seen["view"]
    assert seen["copy_in_transaction"] is True
    assert seen["copy_closed_before_view_ended"] is True
    assert seen["view_untouched"] is True
    assert seen["registered_in_view"] == 1
    [torn] = quart_setup.teardowns.of(seen["copy_ctx"])
    assert torn.exc is None and torn.registered == 1  # only the view's session was left
    assert quart_setup.clean()


@needs_quart
async def test_copied_app_context_may_outlive_the_request(quart_setup: QuartSetup) -> None:
    """Unlike a bare create_task, a copied app context still opens a session after teardown."""
    app, engine = quart_setup.app, quart_setup.engine
    seen: dict[str, t.Any] = {}
    request_ended = asyncio.Event()
    background: set[asyncio.Task[None]] = set()

    async def work() -> None:
        await asyncio.wait_for(request_ended.wait(), TIMEOUT)
        seen["copy_ctx"] = current_app_context()
        seen["copy"] = current_session()
        current_session.add(Todo(title="after the request"))
        await current_session.commit()
        await current_session.execute(text("select 1"))

    @app.post("/")
    async def view() -> str:
        seen["view_ctx"] = current_app_context()
        background.add(asyncio.create_task(copy_current_app_context(work)()))
        return "ok"

    assert (await app.test_client().post("/")).status_code == 200
    assert [call.exc for call in quart_setup.teardowns.of(seen["view_ctx"])] == [None]
    request_ended.set()
    await asyncio.wait_for(asyncio.gather(*background), TIMEOUT)

    assert seen["copy_ctx"] is not seen["view_ctx"]
    assert not seen["copy"].in_transaction()
    assert [call.exc for call in quart_setup.teardowns.of(seen["copy_ctx"])] == [None]
    assert quart_setup.clean()
    assert await count_todos_async(engine) == 1


@needs_quart
async def test_copied_request_context_outliving_the_request_is_refused(
    quart_setup: QuartSetup,
) -> None:
    """Quart's copy_current_request_context reuses the request's app context, even after it."""
    app = quart_setup.app
    outcome: list[str] = []
    request_ended = asyncio.Event()
    background: set[asyncio.Task[None]] = set()

    async def work() -> None:
        await asyncio.wait_for(request_ended.wait(), TIMEOUT)
        try:
            await current_session.execute(text("select 1"))
            outcome.append("opened a session")
        except RuntimeError as error:
            outcome.append(str(error))

    @app.get("/")
    async def view() -> str:
        background.add(asyncio.create_task(quart_copy_current_request_context(work)()))
        return "ok"

    assert (await app.test_client().get("/")).status_code == 200
    request_ended.set()
    await asyncio.wait_for(asyncio.gather(*background), TIMEOUT)
    [message] = outcome
    assert "is torn down" in message and "fresh()" in message
    assert len(quart_setup.teardowns.calls) == 1  # no context of its own was pushed
    assert quart_setup.clean()


@needs_quart
async def test_child_tasks_share_the_request_session(quart_setup: QuartSetup) -> None:
    """create_task and copy_current_request_context children share the request's session."""
    app = quart_setup.app

    async def child() -> AsyncSession:
        session: AsyncSession = current_session()
        return session

    @app.get("/")
    async def view() -> str:
        parent = current_session()
        plain = await asyncio.create_task(child())
        copied = await asyncio.create_task(quart_copy_current_request_context(child)())
        return f"{plain is parent} {copied is parent}"

    assert await (await app.test_client().get("/")).get_data(as_text=True) == "True True"
    assert quart_setup.clean()


# --- Quart: streaming ----------------------------------------------------------------------


@needs_quart
async def test_quart_stream_with_context_body_gets_a_new_session(quart_setup: QuartSetup) -> None:
    """The view's session is closed before the body; the body gets a new one, closed after."""
    app, engine = quart_setup.app, quart_setup.engine
    seen: dict[str, t.Any] = {}

    @app.get("/")
    async def view() -> cabc.AsyncIterator[bytes]:
        seen["view_ctx"] = current_app_context()
        seen["view"] = current_session()
        await current_session.execute(text("select 1"))

        @quart_stream_with_context
        async def body() -> cabc.AsyncIterator[bytes]:
            seen["view_closed_before_body"] = not seen["view"].in_transaction()
            seen["body_ctx"] = current_app_context()
            seen["body"] = session = current_session()
            session.add(Todo(title="streamed"))
            await current_session.commit()
            count = await current_session.scalar(select(func.count()).select_from(Todo))
            seen["body_in_transaction"] = session.in_transaction()
            yield f"{count} ".encode()
            yield b"done"

        return t.cast(cabc.AsyncIterator[bytes], body())

    response = await app.test_client().get("/")
    assert await response.get_data(as_text=True) == "1 done"
    assert seen["view_closed_before_body"] is True
    assert seen["body_ctx"] is not seen["view_ctx"]
    assert seen["body"] is not seen["view"]
    assert seen["body_in_transaction"] is True
    assert not seen["body"].in_transaction()
    assert [call.exc for call in quart_setup.teardowns.of(seen["view_ctx"])] == [None]
    assert [call.exc for call in quart_setup.teardowns.of(seen["body_ctx"])] == [None]
    assert quart_setup.teardowns.calls[0].ctx is seen["view_ctx"]  # torn down first
    assert quart_setup.clean()
    assert await count_todos_async(engine) == 1


@needs_quart
async def test_quart_view_changes_are_discarded_before_the_body(
    quart_setup: QuartSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """Uncommitted changes of the view are rolled back, with a warning, before the body runs."""
    app, engine = quart_setup.app, quart_setup.engine

    @app.get("/")
    async def view() -> cabc.AsyncIterator[bytes]:
        current_session.add(Todo(title="left for the body to commit"))

        @quart_stream_with_context
        async def body() -> cabc.AsyncIterator[bytes]:
            await current_session.commit()  # the body's own, new session: nothing to commit
            count = await current_session.scalar(select(func.count()).select_from(Todo))
            yield str(count).encode()

        return t.cast(cabc.AsyncIterator[bytes], body())

    with caplog.at_level(logging.WARNING, logger="async_scoped_session_ext"):
        assert await (await app.test_client().get("/")).get_data(as_text=True) == "0"
    assert "never committed (1 new, 0 changed, 0 deleted objects)" in caplog.text
    assert quart_setup.clean()
    assert await count_todos_async(engine) == 0


@needs_quart
async def test_quart_stream_client_gone_mid_body_closes_the_session(
    quart_setup: QuartSetup,
) -> None:
    """A client hanging up mid-stream cancels the body; its context and session are closed."""
    app, engine = quart_setup.app, quart_setup.engine
    seen: dict[str, t.Any] = {}
    streaming = asyncio.Event()

    @app.get("/")
    async def view() -> cabc.AsyncIterator[bytes]:
        @quart_stream_with_context
        async def body() -> cabc.AsyncIterator[bytes]:
            seen["body_ctx"] = current_app_context()
            seen["body"] = current_session()
            current_session.add(Todo(title="never committed"))
            await current_session.flush()
            for _ in range(1000):
                yield b"chunk"
                streaming.set()
                await asyncio.sleep(0.01)

        return t.cast(cabc.AsyncIterator[bytes], body())

    async with app.test_client().request("/") as connection:
        await connection.send_complete()
        assert await asyncio.wait_for(connection.receive(), TIMEOUT) == b"chunk"
        await asyncio.wait_for(streaming.wait(), TIMEOUT)
        await connection.disconnect()

    [torn] = quart_setup.teardowns.of(seen["body_ctx"])
    assert isinstance(torn.exc, asyncio.CancelledError)
    assert not seen["body"].in_transaction()
    assert quart_setup.clean()
    assert await count_todos_async(engine) == 0


@needs_quart
async def test_plain_generator_body_has_no_app_context_test_client(
    quart_setup: QuartSetup,
) -> None:
    """A plain async generator body runs without an app context: current_session raises."""
    app = quart_setup.app

    @app.get("/")
    async def view() -> cabc.AsyncIterator[bytes]:
        await current_session.execute(text("select 1"))

        async def body() -> cabc.AsyncIterator[bytes]:
            yield b"first "
            await current_session.execute(text("select 1"))
            yield b"never"

        return body()

    # The error escapes from the body after the response was started: the test client
    # re-raises it (there is no error response to make any more).
    with pytest.raises(RuntimeError, match="Working outside of application context"):
        await app.test_client().get("/")
    assert len(quart_setup.teardowns.calls) == 1  # only the view's context existed
    assert quart_setup.clean()


@needs_quart
async def test_plain_generator_body_has_no_app_context_hypercorn(
    quart_setup: QuartSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """Over hypercorn the 200 is already sent: the client sees a cut body, nothing leaks."""
    app = quart_setup.app

    @app.get("/")
    async def view() -> cabc.AsyncIterator[bytes]:
        await current_session.execute(text("select 1"))

        async def body() -> cabc.AsyncIterator[bytes]:
            yield b"first "
            await current_session.execute(text("select 1"))
            yield b"never"

        return body()

    with caplog.at_level(logging.ERROR, logger="hypercorn.error"):
        async with (
            asyncio.timeout(3 * TIMEOUT),
            serving_asgi(app) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT, trust_env=False) as client,
            client.stream("GET", "/") as response,
        ):
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                await response.aread()
    assert "Error in ASGI Framework" in caplog.text
    assert "Working outside of application context" in caplog.text
    assert len(quart_setup.teardowns.calls) == 3  # startup, the view, shutdown
    assert quart_setup.clean()


@needs_quart
@pytest.mark.parametrize("expire_on_commit", [True, False])
async def test_quart_streamed_orm_objects(
    async_engine: AsyncEngine, expire_on_commit: bool
) -> None:
    """Objects committed in the view are detached in the body: expired ones cannot load."""
    app = Quart(__name__)
    scoped = async_scoped_session(
        async_sessionmaker(async_engine, expire_on_commit=expire_on_commit), app
    )

    @app.get("/")
    async def view() -> cabc.AsyncIterator[bytes]:
        todo = Todo(title="streamed")
        current_session.add(todo)
        await current_session.commit()

        async def body() -> cabc.AsyncIterator[bytes]:
            yield b"title: "
            yield todo.title.encode()

        return body()

    client = app.test_client()
    if expire_on_commit:
        with pytest.raises(DetachedInstanceError):
            await client.get("/")
    else:
        assert await (await client.get("/")).get_data(as_text=True) == "title: streamed"
    assert len(scoped.registry) == 0
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# --- Quart: websockets ---------------------------------------------------------------------


def websocket_app(quart_setup: QuartSetup, sessions: list[AsyncSession]) -> None:
    """``/ws``: each message adds a todo; ``commit`` commits it, ``bye`` ends the handler.

    Every reply says whether the session is the connection's first one, whether it holds a
    transaction, and how many connections are checked out.
    """
    app, engine = quart_setup.app, quart_setup.engine

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message == "bye":
                return
            session: AsyncSession = current_session()
            sessions.append(session)
            current_session.add(Todo(title=str(message)))
            if message == "commit":
                await current_session.commit()
            else:
                await current_session.flush()
            same = session is sessions[0]
            checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
            await websocket.send(f"{same} {session.in_transaction()} {checked_out}")


@needs_quart
async def test_websocket_one_session_per_connection(quart_setup: QuartSetup) -> None:
    """One session for the whole connection; a commit per message frees its connection."""
    sessions: list[AsyncSession] = []
    websocket_app(quart_setup, sessions)

    async with quart_setup.app.test_client().websocket("/ws") as ws:
        for _ in range(3):
            await ws.send("commit")
            assert await asyncio.wait_for(ws.receive(), TIMEOUT) == "True False 0"
        await ws.send("bye")  # the handler returns: a normal end
        # Wait for the recorder, which runs after the library's teardown: leaving the block
        # sends a disconnect, and Quart would cancel a teardown still in progress.
        await eventually(lambda: len(quart_setup.teardowns.calls) == 1, "the teardown ran")

    assert len({id(session) for session in sessions}) == 1
    ws_ctx = quart_setup.teardowns.calls[0].ctx
    assert [call.exc for call in quart_setup.teardowns.calls] == [None]
    assert quart_setup.teardowns.of(ws_ctx)[0].registered == 0
    assert not sessions[0].in_transaction()
    assert await count_todos_async(quart_setup.engine) == 3


@needs_quart
async def test_websocket_abrupt_disconnect_rolls_back_and_closes(quart_setup: QuartSetup) -> None:
    """A client gone mid-transaction cancels the handler; the session is rolled back, closed."""
    sessions: list[AsyncSession] = []
    websocket_app(quart_setup, sessions)

    async with quart_setup.app.test_client().websocket("/ws") as ws:
        await ws.send("commit")
        assert await asyncio.wait_for(ws.receive(), TIMEOUT) == "True False 0"
        await ws.send("uncommitted")  # without a commit, the transaction pins a connection
        assert await asyncio.wait_for(ws.receive(), TIMEOUT) == "True True 1"
    # Leaving the block sends websocket.disconnect while the handler awaits a message.

    await eventually(quart_setup.clean, "the connection's session was closed")
    [torn] = quart_setup.teardowns.calls
    assert isinstance(torn.exc, asyncio.CancelledError)
    assert (torn.registered, torn.checked_out) == (0, 0)
    assert not sessions[0].in_transaction()
    assert await count_todos_async(quart_setup.engine) == 1


class WebsocketClient:
    """A minimal websocket client on wsproto (hypercorn's own websocket library)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.connection = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []

    @classmethod
    async def connect(cls, base_url: str, path: str) -> WebsocketClient:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        client = cls(reader, writer)
        client.writer.write(client.connection.send(Request(host=f"{host}:{port}", target=path)))
        assert isinstance(await client.event(), AcceptConnection)
        return client

    async def event(self) -> Event:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            self.connection.receive_data(data or None)
            self.pending.extend(self.connection.events())
        return self.pending.pop(0)

    async def send(self, message: str) -> None:
        self.writer.write(self.connection.send(TextMessage(data=message)))
        await self.writer.drain()

    async def receive(self) -> str:
        event = await self.event()
        assert isinstance(event, TextMessage), event
        return event.data

    async def close(self) -> None:
        """A normal close: a close frame, answered by the server's."""
        self.writer.write(self.connection.send(CloseConnection(code=1000)))
        assert isinstance(await self.event(), CloseConnection)
        self.writer.close()
        await self.writer.wait_closed()

    def abort(self) -> None:
        """An abrupt end: the TCP connection is reset, with no close frame."""
        self.writer.transport.abort()


@needs_quart
@pytest.mark.parametrize("ending", ["close", "abort"])
async def test_websocket_over_hypercorn(quart_setup: QuartSetup, ending: str) -> None:
    """Over hypercorn, a close frame or a reset both cancel the handler; nothing leaks."""
    sessions: list[AsyncSession] = []
    websocket_app(quart_setup, sessions)

    async with asyncio.timeout(3 * TIMEOUT), serving_asgi(quart_setup.app) as base_url:
        ws = await WebsocketClient.connect(base_url, "/ws")
        for _ in range(2):
            await ws.send("commit")
            assert await ws.receive() == "True False 0"
        await ws.send("uncommitted")
        assert await ws.receive() == "True True 1"
        if ending == "close":
            await ws.close()
        else:
            ws.abort()

        def ws_teardowns() -> list[Teardown]:  # the lifespan's teardowns get exc=None
            return [call for call in quart_setup.teardowns.calls if call.exc is not None]

        # The recorder runs after the library's teardown, so once it has, all is closed.
        await eventually(lambda: len(ws_teardowns()) > 0, "the connection was torn down")

    [torn] = ws_teardowns()
    assert isinstance(torn.exc, asyncio.CancelledError)
    assert (torn.registered, torn.checked_out) == (0, 0)
    assert len({id(session) for session in sessions}) == 1
    assert not sessions[0].in_transaction()
    assert quart_setup.clean()
    assert await count_todos_async(quart_setup.engine) == 2


# --- Flask fixtures ------------------------------------------------------------------------


@dataclass
class FlaskSetup:
    """A sync Flask app, its scoped session, and the teardowns seen after the library's."""

    app: Flask
    scoped: flask_scoped_session[Session]
    engine: Engine
    teardowns: Teardowns

    def clean(self) -> bool:
        """No session registered and no connection checked out."""
        return len(self.scoped.registry) == 0 and self.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def make_flask_setup(engine: Engine, **session_options: t.Any) -> FlaskSetup:
    """A Flask app whose teardowns are recorded, with the state after the library's."""
    app = Flask(__name__)
    app.testing = True
    teardowns = Teardowns()
    scoped = flask_scoped_session(sessionmaker(bind=engine, **session_options), app)
    record_teardowns(app, teardowns, engine, lambda: len(scoped.registry))
    return FlaskSetup(app, scoped, engine, teardowns)


@pytest.fixture
def flask_setup(sync_engine: Engine) -> FlaskSetup:
    """The sync Flask app for these tests."""
    return make_flask_setup(sync_engine)


# --- Flask: a copied request context in a thread -------------------------------------------


def test_copy_current_request_context_in_a_thread(flask_setup: FlaskSetup) -> None:
    """The thread pushes a new app context: its own session, closed in that thread."""
    app, scoped = flask_setup.app, flask_setup.scoped
    seen: dict[str, t.Any] = {}

    @app.post("/")
    def view() -> str:
        seen["view_ctx"] = current_app_context()
        seen["view"] = view_session = current_session()
        current_session.execute(text("select 1"))

        @copy_current_request_context
        def work() -> None:
            seen["thread"] = threading.get_ident()
            seen["thread_ctx"] = current_app_context()
            seen["copy"] = session = current_session()
            session.add(Todo(title="from the thread"))
            current_session.commit()
            current_session.execute(text("select 1"))
            seen["copy_in_transaction"] = session.in_transaction()

        thread = threading.Thread(target=work)
        thread.start()
        thread.join(TIMEOUT)
        seen["copy_closed_before_view_ended"] = not seen["copy"].in_transaction()
        seen["view_untouched"] = scoped() is view_session and view_session.in_transaction()
        return str(current_session.scalar(select(func.count()).select_from(Todo)))

    assert app.test_client().post("/").text == "1"
    assert seen["thread"] != threading.get_ident()
    assert seen["thread_ctx"] is not seen["view_ctx"]
    assert seen["copy"] is not seen["view"]
    assert seen["copy_in_transaction"] is True
    assert seen["copy_closed_before_view_ended"] is True
    assert seen["view_untouched"] is True
    [torn] = flask_setup.teardowns.of(seen["thread_ctx"])
    assert torn.thread == seen["thread"] and torn.exc is None
    assert (torn.registered, torn.checked_out) == (1, 1)  # only the view's session is left
    assert flask_setup.clean()


# --- Flask 3.1: stream_with_context ---------------------------------------------------------


@flask_31_streaming
def test_flask_stream_with_context(
    flask_setup: FlaskSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """The same context is torn down twice: before the body, and after it with its new session."""
    app, engine = flask_setup.app, flask_setup.engine
    seen: dict[str, t.Any] = {}

    @app.get("/")
    def view() -> Response:
        seen["view_ctx"] = current_app_context()
        seen["view"] = current_session()
        current_session.execute(text("select 1"))

        def body() -> cabc.Iterator[str]:
            seen["view_closed_before_body"] = not seen["view"].in_transaction()
            seen["teardowns_before_body"] = len(flask_setup.teardowns.calls)
            seen["body_ctx"] = current_app_context()
            seen["body"] = session = current_session()
            session.add(Todo(title="streamed"))
            current_session.commit()
            count = current_session.scalar(select(func.count()).select_from(Todo))
            seen["body_in_transaction"] = session.in_transaction()
            yield f"{count} "
            yield "done"

        return Response(flask_stream_with_context(body()))

    with caplog.at_level(logging.WARNING, logger="async_scoped_session_ext"):
        response = app.test_client().get("/")
        # The test client has started the body: while it is suspended, its contexts stay
        # pushed in the iterating thread, until get_data() runs it to its end.
        assert current_app_context() is seen["view_ctx"]
        assert response.get_data(as_text=True) == "1 done"
        assert current_app_context() is None

    assert caplog.records == []
    assert seen["view_closed_before_body"] is True
    assert seen["teardowns_before_body"] == 1
    assert seen["body_ctx"] is seen["view_ctx"]  # Flask 3.1 re-pushes the same context
    assert seen["body"] is not seen["view"]
    assert seen["body_in_transaction"] is True
    assert not seen["body"].in_transaction()
    torn = flask_setup.teardowns.of(seen["view_ctx"])
    assert [call.exc for call in torn] == [None, None]
    assert [(call.registered, call.checked_out) for call in torn] == [(0, 0), (0, 0)]
    assert flask_setup.teardowns.calls == torn
    assert flask_setup.clean()
    assert count_todos(engine) == 1


@flask_31_streaming
def test_flask_view_changes_are_discarded_before_the_body(
    flask_setup: FlaskSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """Uncommitted changes of the view are rolled back, with a warning, before the body runs."""
    app, engine = flask_setup.app, flask_setup.engine

    @app.get("/")
    def view() -> Response:
        current_session.add(Todo(title="left for the body to commit"))

        def body() -> cabc.Iterator[str]:
            current_session.commit()  # the body's own, new session: nothing to commit
            yield str(current_session.scalar(select(func.count()).select_from(Todo)))

        return Response(flask_stream_with_context(body()))

    with caplog.at_level(logging.WARNING, logger="async_scoped_session_ext"):
        assert app.test_client().get("/").get_data(as_text=True) == "0"
    assert "never committed (1 new, 0 changed, 0 deleted objects)" in caplog.text
    assert flask_setup.clean()
    assert count_todos(engine) == 0


@flask_31_streaming
def test_flask_stream_session_captured_in_the_view_is_not_the_body_session(
    flask_setup: FlaskSetup,
) -> None:
    """A session object kept from the view is closed, and reopens a connection nothing closes."""
    app, engine = flask_setup.app, flask_setup.engine
    captured: list[Session] = []

    @app.get("/")
    def view() -> Response:
        session: Session = current_session()
        captured.append(session)

        def body() -> cabc.Iterator[str]:
            yield str(session.scalar(text("select 1")))  # the view's closed session, reused

        return Response(flask_stream_with_context(body()))

    try:
        assert app.test_client().get("/").get_data(as_text=True) == "1"
        assert len(flask_setup.scoped.registry) == 0
        assert captured[0].in_transaction()  # a new transaction no teardown will end
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    finally:
        captured[0].close()
    assert flask_setup.clean()


@flask_31_streaming
@pytest.mark.parametrize("ending", ["complete", "hang_up"])
def test_flask_stream_with_context_on_threaded_werkzeug(
    flask_setup: FlaskSetup, ending: str
) -> None:
    """On a real server the body's session is closed in the serving thread, also on hang-up."""
    app = flask_setup.app
    seen: dict[str, t.Any] = {}

    @app.get("/")
    def view() -> Response:
        seen["view_ctx"] = current_app_context()
        seen["view"] = current_session()
        current_session.execute(text("select 1"))
        chunks = 3 if ending == "complete" else 10_000

        def body() -> cabc.Iterator[str]:
            seen["body_thread"] = threading.get_ident()
            seen["body"] = current_session()
            current_session.execute(text("select 1"))
            for _ in range(chunks):
                yield "x" * 65536
                if ending == "hang_up":
                    time.sleep(0.005)

        return Response(flask_stream_with_context(body()))

    with (
        serving_wsgi(app) as base_url,
        httpx.Client(base_url=base_url, timeout=TIMEOUT, trust_env=False) as client,
    ):
        with client.stream("GET", "/") as response:
            assert response.status_code == 200
            if ending == "complete":
                assert len(response.read()) == 3 * 65536
            else:
                next(response.iter_bytes())  # then close the connection mid-body
        eventually_sync(lambda: len(flask_setup.teardowns.calls) == 2, "the second teardown ran")

    torn = flask_setup.teardowns.of(seen["view_ctx"])
    assert len(torn) == 2
    assert {call.thread for call in torn} == {seen["body_thread"]}
    expected = None if ending == "complete" else GeneratorExit
    assert torn[0].exc is None
    assert (type(torn[1].exc) if torn[1].exc is not None else None) is expected
    assert [(call.registered, call.checked_out) for call in torn] == [(0, 0), (0, 0)]
    assert seen["body"] is not seen["view"]
    assert not seen["body"].in_transaction()
    assert flask_setup.clean()


@flask_30_streaming
def test_flask_30_stream_with_context_keeps_the_view_session(
    flask_setup: FlaskSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside Flask 3.1 the body shares the view's context and session; one teardown, after it."""
    app, engine = flask_setup.app, flask_setup.engine
    seen: dict[str, t.Any] = {}

    @app.get("/")
    def view() -> Response:
        seen["view_ctx"] = current_app_context()
        seen["view"] = current_session()
        current_session.add(Todo(title="left for the body to commit"))

        def body() -> cabc.Iterator[str]:
            seen["teardowns_before_body"] = len(flask_setup.teardowns.calls)
            seen["body_ctx"] = current_app_context()
            seen["body"] = current_session()
            current_session.commit()
            yield str(current_session.scalar(select(func.count()).select_from(Todo)))

        return Response(flask_stream_with_context(body()))

    with caplog.at_level(logging.WARNING, logger="async_scoped_session_ext"):
        assert app.test_client().get("/").get_data(as_text=True) == "1"

    assert caplog.records == []
    assert seen["teardowns_before_body"] == 0
    assert seen["body_ctx"] is seen["view_ctx"]
    assert seen["body"] is seen["view"]
    assert not seen["body"].in_transaction()
    [torn] = flask_setup.teardowns.calls
    assert torn.ctx is seen["view_ctx"] and torn.exc is None
    assert (torn.registered, torn.checked_out) == (0, 0)
    assert flask_setup.clean()
    assert count_todos(engine) == 1


@flask_30_streaming
@pytest.mark.parametrize("ending", ["complete", "hang_up"])
def test_flask_30_stream_with_context_on_threaded_werkzeug(
    flask_setup: FlaskSetup, ending: str
) -> None:
    """Outside Flask 3.1, on a real server: one teardown in the serving thread, also on hang-up."""
    app = flask_setup.app
    seen: dict[str, t.Any] = {}

    @app.get("/")
    def view() -> Response:
        seen["view_ctx"] = current_app_context()
        current_session.execute(text("select 1"))
        chunks = 3 if ending == "complete" else 10_000

        def body() -> cabc.Iterator[str]:
            seen["body_thread"] = threading.get_ident()
            seen["body"] = current_session()
            current_session.execute(text("select 1"))
            for _ in range(chunks):
                yield "x" * 65536
                if ending == "hang_up":
                    time.sleep(0.005)

        return Response(flask_stream_with_context(body()))

    with (
        serving_wsgi(app) as base_url,
        httpx.Client(base_url=base_url, timeout=TIMEOUT, trust_env=False) as client,
    ):
        with client.stream("GET", "/") as response:
            assert response.status_code == 200
            if ending == "complete":
                assert len(response.read()) == 3 * 65536
            else:
                next(response.iter_bytes())  # then close the connection mid-body
        eventually_sync(lambda: len(flask_setup.teardowns.calls) == 1, "the teardown ran")

    [torn] = flask_setup.teardowns.calls
    assert torn.ctx is seen["view_ctx"] and torn.thread == seen["body_thread"]
    assert (torn.registered, torn.checked_out) == (0, 0)
    assert not seen["body"].in_transaction()
    assert flask_setup.clean()


def test_flask_plain_generator_body_has_no_app_context(flask_setup: FlaskSetup) -> None:
    """Without stream_with_context the body runs after the pop: current_session raises."""
    app = flask_setup.app

    @app.get("/")
    def view() -> Response:
        current_session.execute(text("select 1"))

        def body() -> cabc.Iterator[str]:
            yield "first "
            yield str(current_session.scalar(text("select 1")))

        return Response(body())

    with pytest.raises(RuntimeError, match="Working outside of application context"):
        app.test_client().get("/").get_data()
    assert len(flask_setup.teardowns.calls) == 1  # only the view's context existed
    assert flask_setup.clean()


@pytest.mark.parametrize("expire_on_commit", [True, False])
def test_flask_streamed_orm_objects(sync_engine: Engine, expire_on_commit: bool) -> None:
    """Objects committed in the view are detached in the body: expired ones cannot load."""
    setup = make_flask_setup(sync_engine, expire_on_commit=expire_on_commit)

    @setup.app.get("/")
    def view() -> Response:
        todo = Todo(title="streamed")
        current_session.add(todo)
        current_session.commit()

        def body() -> cabc.Iterator[str]:
            yield "title: "
            yield todo.title

        return Response(body())

    client = setup.app.test_client()
    if expire_on_commit:
        with pytest.raises(DetachedInstanceError):
            client.get("/").get_data()
    else:
        assert client.get("/").get_data(as_text=True) == "title: streamed"
    assert setup.clean()


# --- CLI commands and the shell -------------------------------------------------------------


def test_flask_cli_command_gets_one_session(flask_setup: FlaskSetup) -> None:
    """A flask command runs in one app context: one session, closed when the command ends."""
    app, engine = flask_setup.app, flask_setup.engine
    sessions: list[Session] = []

    @app.cli.command("add")
    def add() -> None:
        sessions.append(current_session())
        current_session.add(Todo(title="from the command"))
        current_session.commit()
        sessions.append(current_session())
        click.echo(current_session.scalar(select(func.count()).select_from(Todo)))

    result = app.test_cli_runner().invoke(args=["add"])
    assert result.exit_code == 0, result.output
    assert result.output == "1\n"
    assert sessions[0] is sessions[1] and not sessions[0].in_transaction()
    [torn] = flask_setup.teardowns.calls
    assert torn.exc is None and (torn.registered, torn.checked_out) == (0, 0)
    assert flask_setup.clean()
    assert count_todos(engine) == 1
    with app.app_context():
        assert app.make_shell_context()["current_session"] is current_session


@pytest.fixture
def runner_engine(async_backend: str, tmp_path: Path) -> cabc.Iterator[AsyncEngine]:
    """An async engine whose connections live on the library's shared loop, where run() runs."""
    with engine_on_shared_loop(database_url(async_backend, tmp_path)) as engine:
        yield engine


@needs_quart
def test_quart_cli_command_closes_its_sessions_after_run(runner_engine: AsyncEngine) -> None:
    """In a quart command, run(coro) closes the context's async session when coro is done."""
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(runner_engine), app)
    sessions: list[AsyncSession] = []

    async def add(title: str) -> int:
        sessions.append(current_session())
        current_session.add(Todo(title=title))
        await current_session.commit()
        return await current_session.scalar(select(func.count()).select_from(Todo)) or 0

    # Unlike Flask's, Quart's app.cli.command() pushes an app context only when asked to.
    @app.cli.command("add", with_appcontext=True)
    def add_command() -> None:
        click.echo(scoped.run(add("one")))
        closed_between = not sessions[0].in_transaction() and len(scoped.registry) == 0
        click.echo(scoped.run(add("two")))
        click.echo(closed_between)

    @app.cli.command("bare")
    def bare_command() -> None:
        click.echo(scoped.run(add("never")))

    result = app.test_cli_runner().invoke(args=["add"])
    assert result.exit_code == 0, result.output
    assert result.output == "1\n2\nTrue\n"
    assert len(sessions) == 2 and sessions[0] is not sessions[1]
    assert not any(session.in_transaction() for session in sessions)

    result = app.test_cli_runner().invoke(args=["bare"])
    assert isinstance(result.exception, RuntimeError)
    assert "Working outside of application context" in str(result.exception)
    assert len(sessions) == 2
    assert len(scoped.registry) == 0
    assert runner_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@needs_quart
async def test_quart_shell_context_has_current_session(quart_setup: QuartSetup) -> None:
    """'quart shell' gets the current_session proxy."""
    async with quart_setup.app.app_context():
        shell_context = quart_setup.app.make_shell_context()
    assert shell_context["current_session"] is current_session
