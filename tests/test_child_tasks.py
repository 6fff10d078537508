"""Child tasks share the request's session; fresh() gives each its own (aiosqlite, asyncpg)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from async_scoped_session_ext import async_scoped_session, current_session

from .support.environment import QUART_MISSING
from .support.models import Todo

pytest.importorskip("quart", reason=QUART_MISSING)

from quart import Quart


@pytest.fixture
def app() -> Quart:
    """A Quart app whose errors become 500 responses."""
    return Quart(__name__)


@pytest.fixture
def scoped(app: Quart, async_engine: AsyncEngine) -> async_scoped_session[AsyncSession]:
    """An async_scoped_session initialised on the app."""
    return async_scoped_session(async_sessionmaker(async_engine), app)


async def test_create_task_shares_the_session(
    app: Quart, scoped: async_scoped_session[AsyncSession]
) -> None:
    """A child task awaited in turn sees the request's session (documented sharing)."""

    @app.get("/")
    async def view() -> str:
        parent = current_session()

        async def child() -> bool:
            return current_session() is parent

        return str(await asyncio.create_task(child()))

    assert await (await app.test_client().get("/")).get_data(as_text=True) == "True"


@pytest.mark.parametrize("parent_queries_first", [True, False])
async def test_concurrent_use_raises_and_leaks_nothing(
    app: Quart,
    scoped: async_scoped_session[AsyncSession],
    async_engine: AsyncEngine,
    parent_queries_first: bool,
) -> None:
    """gather() on the shared session fails with an error naming fresh(); nothing leaks."""
    errors: list[str] = []

    @app.get("/")
    async def view() -> str:
        if parent_queries_first:
            await current_session.execute(text("select 1"))

        async def child() -> None:
            await current_session.execute(text("select 1"))
            await asyncio.sleep(0.05)
            await current_session.execute(text("select 1"))

        try:
            await asyncio.gather(child(), child(), child())
        except RuntimeError as error:
            errors.append(str(error))
            raise
        return "unreachable"

    client = app.test_client()
    for _ in range(5):
        assert (await client.get("/")).status_code == 500
    assert len(errors) == 5
    assert "async with scoped.fresh() as session" in errors[0]
    assert len(scoped.registry) == 0
    for _ in range(100):  # the children still running finish, then their session closes
        if async_engine.pool.checkedout() == 0:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.02)
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_fresh_sessions_for_concurrent_children(
    app: Quart, scoped: async_scoped_session[AsyncSession], async_engine: AsyncEngine
) -> None:
    """Each child opens fresh(); they run concurrently and every one is closed."""
    opened: list[AsyncSession] = []

    @app.post("/")
    async def view() -> str:
        async def child(number: int) -> int:
            async with scoped.fresh() as session:
                opened.append(session)
                session.add(Todo(title=f"child {number}"))
                await session.commit()
                return number

        results = await asyncio.gather(*(child(n) for n in range(4)))
        total = await current_session.scalar(select(func.count()).select_from(Todo))
        return f"{sum(results)} {total}"

    response = await app.test_client().post("/")
    assert await response.get_data(as_text=True) == "6 4"
    assert len({id(session) for session in opened}) == 4
    assert not any(session.in_transaction() for session in opened)
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_wait_for_is_not_concurrent_use(
    app: Quart, scoped: async_scoped_session[AsyncSession]
) -> None:
    """asyncio.wait_for() runs the query in a helper task; that is not concurrent use."""

    @app.get("/")
    async def view() -> str:
        await current_session.execute(text("select 1"))
        result = await asyncio.wait_for(current_session.execute(text("select 2")), 10)
        return str(result.scalar_one())

    assert await (await app.test_client().get("/")).get_data(as_text=True) == "2"


async def test_task_outliving_the_request_is_refused(
    app: Quart, scoped: async_scoped_session[AsyncSession], async_engine: AsyncEngine
) -> None:
    """A task that runs on after teardown cannot open a session that nothing would close."""
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def straggler() -> None:
        await asyncio.sleep(0.05)  # the request has ended by now
        try:
            await current_session.execute(text("select 1"))
            outcome.set_result("opened a session")
        except RuntimeError as error:
            outcome.set_result(str(error))
        try:
            async with scoped.fresh() as session:
                await session.execute(text("select 1"))
        except Exception as error:  # pragma: no cover - reported through the assertion
            outcome.set_result(f"fresh() failed: {error}")

    background: set[asyncio.Task[None]] = set()

    @app.get("/")
    async def view() -> str:
        background.add(asyncio.create_task(straggler()))
        return "ok"

    assert (await app.test_client().get("/")).status_code == 200
    message = await asyncio.wait_for(outcome, 10)
    await asyncio.gather(*background)
    assert "is torn down" in message
    assert "fresh()" in message
    assert len(scoped.registry) == 0
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_uncommitted_changes_are_reported(
    app: Quart, scoped: async_scoped_session[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    """A request that ends normally with unsaved changes logs a warning; a failed one not."""

    @app.get("/forgot")
    async def forgot() -> str:
        current_session.add(Todo(title="never saved"))
        return "ok"

    @app.get("/failed")
    async def failed() -> str:
        current_session.add(Todo(title="rolled back on purpose"))
        raise ValueError("boom")

    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="async_scoped_session_ext"):
        await client.get("/forgot")
        assert "never committed (1 new, 0 changed, 0 deleted objects)" in caplog.text
        caplog.clear()
        assert (await client.get("/failed")).status_code == 500
        assert "never committed" not in caplog.text
