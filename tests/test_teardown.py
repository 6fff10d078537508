"""The teardown's promises where the seams meet: late tasks, slow closes, failing closes,
websockets, teardown functions that use the session, and ``scoped(**kw)``.

Regression tests for defects of the code before the framework-free core (b9435be): real
databases, the frameworks' own test clients, every wait bounded.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import concurrent.futures
import logging
import threading
import time
from pathlib import Path

import click
import pytest
from flask import Flask
from flask.ctx import AppContext
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session

from .support.databases import database_url, engine_on_shared_loop
from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo

if HAS_QUART:  # Flask 2.3's compat cell has none; its Quart tests are skipped there
    from quart import Quart, websocket
    from quart.signals import appcontext_popped

TIMEOUT = 10.0  # seconds any single wait may take
LOGGER = "async_scoped_session_ext"
SLOW_CLOSE = 1.0  # seconds the slow sync close takes


@pytest.fixture
def shared_loop_engine(async_backend: str, tmp_path: Path) -> cabc.Iterator[AsyncEngine]:
    """An async engine with fresh tables, its connections on the library's shared loop."""
    with engine_on_shared_loop(database_url(async_backend, tmp_path)) as engine:
        yield engine


def count_todos(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Todo)) or 0


async def count_todos_async(engine: AsyncEngine) -> int:
    async with AsyncSession(engine) as session:
        return await session.scalar(select(func.count()).select_from(Todo)) or 0


def wait_until(check: cabc.Callable[[], bool], what: str) -> None:
    """Wait (at most ``TIMEOUT`` seconds) until *check* holds, in sync code."""
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


# --- Flask async views: a context without a session is torn down too -------------------------


@pytest.mark.parametrize("moment", ["teardown-done", "context-popped"])
def test_flask_task_outliving_a_request_without_session_is_refused(
    shared_loop_engine: AsyncEngine, moment: str
) -> None:
    """A task asking for a session once its request (which had none) is torn down is refused."""
    ask = threading.Event()
    outcome: concurrent.futures.Future[str] = concurrent.futures.Future()
    background: set[asyncio.Task[None]] = set()

    class App(Flask):
        # Flask 3.2 passes (ctx, exc) and warns unless the first parameter is named ctx or
        # annotated AppContext; Flask < 3.2 passes (exc): whatever comes is passed on.
        def do_teardown_appcontext(self, ctx: AppContext, *rest: object) -> None:  # type: ignore[override]
            super().do_teardown_appcontext(ctx, *rest)  # type: ignore[arg-type]
            if moment == "teardown-done":  # the context is still pushed, the task asks now
                ask.set()
                outcome.result(TIMEOUT)

    app = App(__name__)
    app.testing = True
    scoped = async_scoped_session(async_sessionmaker(shared_loop_engine), app)

    async def straggler() -> None:
        await asyncio.to_thread(ask.wait, TIMEOUT)
        try:
            await current_session.execute(text("select 1"))
            outcome.set_result("opened a session")
        except RuntimeError as error:
            outcome.set_result(str(error))

    @app.get("/")
    async def view() -> str:  # on the shared loop, like the task it starts
        task = asyncio.get_running_loop().create_task(straggler())
        background.add(task)
        task.add_done_callback(background.discard)
        return "ok"

    assert app.test_client().get("/").status_code == 200
    ask.set()
    message = outcome.result(TIMEOUT)
    wait_until(lambda: not background, "the straggler task ended")
    assert "is torn down" in message, message
    assert len(scoped.registry) == 0
    assert shared_loop_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# --- Quart: a slow sync close runs off the event loop ----------------------------------------


@needs_quart
async def test_quart_slow_sync_close_does_not_hold_up_other_requests(sync_engine: Engine) -> None:
    """While a sync session's slow close runs at teardown, another request is served at once."""
    closes: list[tuple[float, float]] = []
    closing = threading.Event()

    class SlowCloseSession(Session):
        def close(self) -> None:
            started = time.monotonic()
            closing.set()
            time.sleep(SLOW_CLOSE)
            super().close()
            closes.append((started, time.monotonic()))

    app = Quart(__name__)
    flask_scoped_session(sessionmaker(bind=sync_engine, class_=SlowCloseSession), app)
    sessions: list[Session] = []

    @app.get("/slow")
    def slow() -> str:  # Quart runs sync views in a worker thread
        sessions.append(current_session())
        current_session.execute(text("select 1"))
        return "slow"

    @app.get("/fast")
    async def fast() -> str:
        return "fast"

    client = app.test_client()

    async def slow_request() -> tuple[int, int]:
        response = await client.get("/slow")
        return response.status_code, len(closes)

    async def fast_request_during_the_close() -> tuple[int, float]:
        while not closing.is_set():
            await asyncio.sleep(0.005)
        response = await client.get("/fast")
        return response.status_code, time.monotonic()

    async with asyncio.timeout(TIMEOUT):
        (slow_status, closed_by_then), (fast_status, fast_done) = await asyncio.gather(
            slow_request(), fast_request_during_the_close()
        )

    assert (slow_status, fast_status) == (200, 200)
    [(close_started, close_ended)] = closes
    assert fast_done - close_started < SLOW_CLOSE / 2, "the fast request waited for the close"
    assert fast_done < close_ended
    assert closed_by_then == 1, "the slow request ended before its session was closed"
    assert not sessions[0].in_transaction()


@needs_quart
async def test_quart_request_cancelled_during_a_sync_close_still_closes_async_sessions(
    sync_engine: Engine, async_engine: AsyncEngine
) -> None:
    """A hang-up while a sync session closes in its worker thread: the async session of the
    same context is closed all the same, and the cancellation is re-raised after."""
    closing = threading.Event()

    class SlowCloseSession(Session):
        def close(self) -> None:
            closing.set()
            time.sleep(SLOW_CLOSE)
            super().close()

    app = Quart(__name__)
    sync_scoped = flask_scoped_session(sessionmaker(bind=sync_engine, class_=SlowCloseSession))
    sync_scoped.init_app(app)
    async_scoped = async_scoped_session(async_sessionmaker(async_engine), app)

    async def pop_during_the_sync_close() -> None:
        ctx = app.app_context()
        await ctx.push()
        try:
            await async_scoped.execute(text("select 1"))  # the async session holds a connection
            await asyncio.to_thread(lambda: sync_scoped().execute(text("select 1")))
        finally:
            await ctx.pop()  # the teardown: cancelled below while the sync close runs

    async with asyncio.timeout(TIMEOUT):
        popping = asyncio.ensure_future(pop_during_the_sync_close())
        while not closing.is_set():
            await asyncio.sleep(0.005)
        popping.cancel()  # as a client hanging up during the teardown would
        with pytest.raises(asyncio.CancelledError):
            await popping

    assert len(sync_scoped.registry) == 0 and len(async_scoped.registry) == 0
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# --- Quart CLI: run() closes every async session even when one close fails -------------------


@needs_quart
def test_quart_run_closes_every_async_session_when_one_close_fails(
    shared_loop_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """In a quart command, run(coro) closes the other sessions past a failing close, logs it."""

    class FailingCloseSession(AsyncSession):
        async def close(self) -> None:
            await super().close()
            raise OSError("the first close fails")

    app = Quart(__name__)
    first = async_scoped_session(
        async_sessionmaker(shared_loop_engine, class_=FailingCloseSession), app, name="first"
    )
    second = async_scoped_session(async_sessionmaker(shared_loop_engine), app, name="second")
    sessions: list[AsyncSession] = []

    async def work() -> str:
        for scoped in (first, second):
            sessions.append(scoped())
            await scoped.execute(text("select 1"))
        return "the result"

    @app.cli.command("work", with_appcontext=True)
    def work_command() -> None:
        click.echo(second.run(work()))
        pool = shared_loop_engine.pool
        click.echo(f"{pool.checkedout()} {len(first.registry)} {len(second.registry)}")  # type: ignore[attr-defined]

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        result = app.test_cli_runner().invoke(args=["work"])

    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output == "the result\n0 0 0\n"
    assert not sessions[1].in_transaction()
    [failure] = [record for record in caplog.records if record.name == LOGGER]
    assert failure.exc_info is not None and "the first close fails" in str(failure.exc_info[1])


# --- Quart websockets: only a failed one is exempt from the uncommitted warning --------------


@needs_quart
@pytest.mark.parametrize("ending", ["raise", "return"])
async def test_quart_websocket_uncommitted_warning_only_after_a_normal_end(
    async_engine: AsyncEngine, caplog: pytest.LogCaptureFixture, ending: str
) -> None:
    """A websocket that raises does not report uncommitted changes; one that returns does."""
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(async_engine), app)
    popped = asyncio.Event()

    async def after_teardown(sender: Quart, **kwargs: object) -> None:
        popped.set()  # appcontext_popped comes after the library's teardown

    appcontext_popped.connect(after_teardown, app, weak=False)

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        await current_session.execute(text("select 1"))
        current_session.add(Todo(title="never committed"))
        if ending == "raise":
            raise ValueError("the handler failed")

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with asyncio.timeout(TIMEOUT), app.test_client().websocket("/ws"):
            await popped.wait()

    warned = "never committed (1 new, 0 changed, 0 deleted objects)" in caplog.text
    assert warned == (ending == "return"), caplog.text
    assert len(scoped.registry) == 0
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await count_todos_async(async_engine) == 0


# --- teardown functions may use the session, registered before or after init_app -------------


@pytest.mark.parametrize("handled", [True, False], ids=["error-handler", "unhandled"])
def test_flask_teardown_functions_may_roll_back(sync_engine: Engine, handled: bool) -> None:
    """Teardown functions registered before and after init_app roll back; the 500 is normal."""
    app = Flask(__name__)
    rolled_back: list[tuple[str, Session]] = []

    @app.teardown_appcontext
    def before_init_app(exc: BaseException | None) -> None:
        current_session.rollback()
        rolled_back.append(("before", current_session()))

    scoped = flask_scoped_session(sessionmaker(bind=sync_engine), app)

    @app.teardown_appcontext
    def after_init_app(exc: BaseException | None) -> None:
        current_session.rollback()
        rolled_back.append(("after", current_session()))

    if handled:

        @app.errorhandler(ValueError)
        def handle(error: ValueError) -> tuple[str, int]:
            return "handled", 500

    sessions: list[Session] = []

    @app.post("/")
    def view() -> str:
        sessions.append(current_session())
        current_session.add(Todo(title="rolled back"))
        current_session.flush()
        raise ValueError("the view failed")

    response = app.test_client().post("/")

    assert response.status_code == 500
    assert ("handled" if handled else "Internal Server Error") in response.text
    assert sorted(name for name, _ in rolled_back) == ["after", "before"]
    assert all(session is sessions[0] for _, session in rolled_back)
    assert not sessions[0].in_transaction()
    assert len(scoped.registry) == 0
    assert count_todos(sync_engine) == 0


@needs_quart
@pytest.mark.parametrize("handled", [True, False], ids=["error-handler", "unhandled"])
async def test_quart_teardown_functions_may_roll_back(
    async_engine: AsyncEngine, handled: bool
) -> None:
    """Teardown functions registered before and after init_app roll back; the 500 is normal."""
    app = Quart(__name__)
    rolled_back: list[tuple[str, AsyncSession]] = []

    @app.teardown_appcontext
    async def before_init_app(exc: BaseException | None) -> None:
        await current_session.rollback()
        rolled_back.append(("before", current_session()))

    scoped = async_scoped_session(async_sessionmaker(async_engine), app)

    @app.teardown_appcontext
    async def after_init_app(exc: BaseException | None) -> None:
        await current_session.rollback()
        rolled_back.append(("after", current_session()))

    if handled:

        @app.errorhandler(ValueError)
        async def handle(error: ValueError) -> tuple[str, int]:
            return "handled", 500

    sessions: list[AsyncSession] = []

    @app.post("/")
    async def view() -> str:
        sessions.append(current_session())
        current_session.add(Todo(title="rolled back"))
        await current_session.flush()
        raise ValueError("the view failed")

    async with asyncio.timeout(TIMEOUT):
        response = await app.test_client().post("/")
        body = await response.get_data(as_text=True)

    assert response.status_code == 500
    assert ("handled" if handled else "Internal Server Error") in body
    assert sorted(name for name, _ in rolled_back) == ["after", "before"]
    assert all(session is sessions[0] for _, session in rolled_back)
    assert not sessions[0].in_transaction()
    assert len(scoped.registry) == 0
    assert await count_todos_async(async_engine) == 0


# --- scoped(**kw): the context's session, made with arguments --------------------------------


def test_flask_scoped_with_arguments_makes_the_context_session(sync_engine: Engine) -> None:
    """scoped(**kw) makes the context's session with them once, refuses a second, closes it."""
    app = Flask(__name__)
    app.testing = True
    scoped = flask_scoped_session(sessionmaker(bind=sync_engine), app)
    sessions: list[Session] = []

    @app.get("/arguments-first")
    def arguments_first() -> str:
        session = scoped(info={"made": "with arguments"})
        sessions.append(session)
        assert scoped() is session and current_session() is session
        session.execute(text("select 1"))
        with pytest.raises(InvalidRequestError, match="already present"):
            scoped(info={"made": "twice"})
        return str(session.info["made"])

    @app.get("/session-first")
    def session_first() -> str:
        sessions.append(scoped())
        with pytest.raises(InvalidRequestError, match="already present"):
            scoped(info={"made": "too late"})
        return "refused"

    client = app.test_client()
    assert client.get("/arguments-first").text == "with arguments"
    assert client.get("/session-first").text == "refused"
    assert sessions[0] is not sessions[1] and sessions[1].info == {}
    assert not sessions[0].in_transaction()
    assert len(scoped.registry) == 0


@needs_quart
async def test_async_scoped_with_arguments_makes_the_context_session(
    async_engine: AsyncEngine,
) -> None:
    """scoped(**kw) makes the context's session with them once, refuses a second, closes it."""
    app = Quart(__name__)
    app.testing = True
    scoped = async_scoped_session(async_sessionmaker(async_engine), app)
    sessions: list[AsyncSession] = []

    @app.get("/arguments-first")
    async def arguments_first() -> str:
        session = scoped(info={"made": "with arguments"})
        sessions.append(session)
        assert scoped() is session and current_session() is session
        await session.execute(text("select 1"))
        with pytest.raises(InvalidRequestError, match="already present"):
            scoped(info={"made": "twice"})
        return str(session.info["made"])

    @app.get("/session-first")
    async def session_first() -> str:
        sessions.append(scoped())
        with pytest.raises(InvalidRequestError, match="already present"):
            scoped(info={"made": "too late"})
        return "refused"

    client = app.test_client()
    async with asyncio.timeout(TIMEOUT):
        first = await client.get("/arguments-first")
        assert await first.get_data(as_text=True) == "with arguments"
        second = await client.get("/session-first")
        assert await second.get_data(as_text=True) == "refused"
    assert sessions[0] is not sessions[1] and sessions[1].info == {}
    assert not sessions[0].in_transaction()
    assert len(scoped.registry) == 0
