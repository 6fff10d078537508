"""Quart: which session background tasks, copied contexts and child tasks get.

``add_background_task`` and ``copy_current_app_context`` push a new app context, so they
get a session of their own, closed when they end, even after the request has gone; a
copied *request* context outliving its request is refused; tasks a view creates share the
view's session; and ``quart shell`` gets the ``current_session`` proxy. On SQLite and
PostgreSQL; the table in docs/contexts.md is made of these results (with those of
``tests/test_flask_contexts.py``, ``test_websockets.py``, ``test_streaming_quart.py``,
``test_streaming_flask.py`` and ``test_cli.py``).
"""

from __future__ import annotations

import asyncio
import typing as t

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from async_scoped_session_ext import current_session
from async_scoped_session_ext._frameworks import current_app_context

from .support import contexts
from .support.contexts import TIMEOUT, QuartSetup, count_todos_async, eventually
from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo
from .support.quart_groups import QUART_MERGED_CONTEXTS

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import copy_current_app_context
    from quart import copy_current_request_context as quart_copy_current_request_context

quart_setup = contexts.quart_setup  # the fixture


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
    """Quart's copy_current_request_context reuses the request's app context, even after it:
    refused there. Quart 0.23 pushes a copy of the context (as Flask does): the late work
    gets a session of its own, closed by the copy's own teardown."""
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
    if QUART_MERGED_CONTEXTS:
        assert message == "opened a session"
        assert len(quart_setup.teardowns.calls) == 2  # the request's, then the copy's
    else:
        assert "is torn down" in message and "fresh()" in message
        assert len(quart_setup.teardowns.calls) == 1  # no context of its own was pushed
    assert quart_setup.clean()


@needs_quart
async def test_child_tasks_share_the_request_session(quart_setup: QuartSetup) -> None:
    """create_task and copy_current_request_context children share the request's session;
    on Quart 0.23, which pushes a copy of the context, the copied one has its own."""
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

    expected = "True False" if QUART_MERGED_CONTEXTS else "True True"
    assert await (await app.test_client().get("/")).get_data(as_text=True) == expected
    assert quart_setup.clean()


# --- Quart: the shell -----------------------------------------------------------------------


@needs_quart
async def test_quart_shell_context_has_current_session(quart_setup: QuartSetup) -> None:
    """'quart shell' gets the current_session proxy."""
    async with quart_setup.app.app_context():
        shell_context = quart_setup.app.make_shell_context()
    assert shell_context["current_session"] is current_session
