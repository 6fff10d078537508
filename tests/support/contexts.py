"""What the context tests share: teardown recording, waiting, counting, the two app setups.

The context tests (``tests/test_quart_contexts.py``, ``test_websockets.py``,
``test_streaming_quart.py``, ``test_streaming_flask.py``, ``test_flask_contexts.py`` and
``test_cli.py``) build a Flask or Quart app whose teardowns are recorded *after* the
library's own teardown has run (``record_teardowns``), so that a test can check which
context was torn down, with which exception, in which thread, and that no session was left
registered nor connection checked out.

Two fixtures live here rather than in ``tests/conftest.py``, because only these files use
them: ``quart_setup`` and ``flask_setup``. A test module makes them available by binding
them at module level (``quart_setup = contexts.quart_setup``), as ``tests/test_pgbouncer.py``
does with its PgBouncer fixtures.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import typing as t
from dataclasses import dataclass, field
from importlib.metadata import version

import pytest
from flask import Flask
from flask.signals import appcontext_popped
from sqlalchemy import Engine, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Request, TextMessage

from async_scoped_session_ext import async_scoped_session, flask_scoped_session
from async_scoped_session_ext._frameworks import current_app_context

from .environment import HAS_QUART
from .models import Todo

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

TIMEOUT = 10.0  # seconds any single wait may take
FLASK_VERSION = tuple(int(part) for part in version("flask").split(".")[:2])


# --- recording teardowns, waiting, counting ------------------------------------------------


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


# --- Quart ----------------------------------------------------------------------------------


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


# --- Flask ----------------------------------------------------------------------------------


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
