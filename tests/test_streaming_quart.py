"""Quart streaming: stream_with_context bodies, plain generator bodies, streamed ORM objects.

The view's session is closed before a ``stream_with_context`` body runs, and the body gets
a session of its own in a new app context, closed after it, also when the client goes away
mid-body; a plain generator body has no app context at all (with the test client and over
hypercorn); ORM objects committed in the view are detached in the body.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import logging
import typing as t

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm.exc import DetachedInstanceError

from async_scoped_session_ext import async_scoped_session, current_session
from async_scoped_session_ext._frameworks import current_app_context

from .support import contexts, quart_groups
from .support.contexts import TIMEOUT, QuartSetup, count_todos_async
from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo
from .support.servers import serving_asgi

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart
    from quart import stream_with_context as quart_stream_with_context

quart_setup = contexts.quart_setup  # the fixture


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
    with quart_groups.raises(RuntimeError, match="Working outside of application context"):
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
        with quart_groups.raises(DetachedInstanceError):
            await client.get("/")
    else:
        assert await (await client.get("/")).get_data(as_text=True) == "title: streamed"
    assert len(scoped.registry) == 0
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
