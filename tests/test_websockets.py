"""Quart websockets: one session per connection, closed however the connection ends.

With Quart's test client and over a real hypercorn server (a wsproto client): a normal
end, a close frame, an abrupt disconnect and a TCP reset all close the connection's
session, rolling back what was not committed.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from async_scoped_session_ext import current_session

from .support import contexts
from .support.contexts import (
    TIMEOUT,
    QuartSetup,
    Teardown,
    WebsocketClient,
    count_todos_async,
    eventually,
)
from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo
from .support.servers import serving_asgi

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import websocket

quart_setup = contexts.quart_setup  # the fixture


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
