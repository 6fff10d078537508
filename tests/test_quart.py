"""async_scoped_session on Quart, on aiosqlite and PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from async_scoped_session_ext import async_scoped_session, current_session
from async_scoped_session_ext._close import close_to_completion

from .support.environment import QUART_MISSING
from .support.models import Todo

pytest.importorskip("quart", reason=QUART_MISSING)

from quart import Quart


@pytest.fixture
def app() -> Quart:
    """A bare Quart app in testing mode."""
    app = Quart(__name__)
    app.testing = True
    return app


@pytest.fixture
def scoped(app: Quart, async_engine: AsyncEngine) -> async_scoped_session[AsyncSession]:
    """An async_scoped_session initialised on the app."""
    return async_scoped_session(async_sessionmaker(async_engine), app)


async def count_todos(engine: AsyncEngine) -> int:
    async with AsyncSession(engine) as session:
        return await session.scalar(select(func.count()).select_from(Todo)) or 0


async def test_one_session_per_context(
    app: Quart, scoped: async_scoped_session[AsyncSession]
) -> None:
    """Within a context the session is stable; each new context gets a new one."""
    async with app.app_context():
        first = scoped()
        assert isinstance(first, AsyncSession)
        assert scoped() is first
        assert current_session() is first
        assert current_session._get_current_object() is scoped
    async with app.app_context():
        assert scoped() is not first


async def test_current_session_awaits_in_a_view(
    app: Quart, scoped: async_scoped_session[AsyncSession], async_engine: AsyncEngine
) -> None:
    """``await current_session.execute(...)`` works in a view and commits are kept."""

    @app.post("/")
    async def add() -> str:
        current_session.add(Todo(title="kept"))
        await current_session.commit()
        result = await current_session.execute(text("select 1"))
        return str(result.scalar_one())

    response = await app.test_client().post("/")
    assert await response.get_data(as_text=True) == "1"
    assert await count_todos(async_engine) == 1


async def test_teardown_rolls_back_uncommitted_work(
    app: Quart, scoped: async_scoped_session[AsyncSession], async_engine: AsyncEngine
) -> None:
    """Uncommitted work is rolled back at teardown, also when the view raises."""

    @app.post("/uncommitted")
    async def uncommitted() -> str:
        scoped.add(Todo(title="lost"))
        await scoped.flush()
        return "ok"

    @app.post("/boom")
    async def boom() -> str:
        scoped.add(Todo(title="lost too"))
        await scoped.flush()
        raise ValueError("boom")

    client = app.test_client()
    assert (await client.post("/uncommitted")).status_code == 200
    app.testing = False
    assert (await client.post("/boom")).status_code == 500
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await count_todos(async_engine) == 0


async def test_nested_context_gets_its_own_session(
    app: Quart, scoped: async_scoped_session[AsyncSession]
) -> None:
    """A nested app_context() has its own session, closed at its exit; the outer survives."""
    async with app.app_context():
        outer = scoped()
        await outer.execute(text("select 1"))
        async with app.app_context():
            inner = scoped()
            assert inner is not outer
            await inner.execute(text("select 1"))
        assert not inner.in_transaction()
        assert scoped() is outer
        assert outer.in_transaction()


async def test_hand_pushed_context(app: Quart, scoped: async_scoped_session[AsyncSession]) -> None:
    """A context pushed by hand gets a session closed when it is popped."""
    ctx = app.app_context()
    await ctx.push()
    try:
        session = current_session()
        await session.execute(text("select 1"))
    finally:
        await ctx.pop()
    assert not session.in_transaction()


async def test_teardown_closes_when_client_disconnects(
    app: Quart, scoped: async_scoped_session[AsyncSession], async_engine: AsyncEngine
) -> None:
    """A client hanging up mid-view cancels the handler; its session is still closed."""
    started = asyncio.Event()
    torn_down: list[BaseException | None] = []

    @app.get("/slow")
    async def slow() -> str:
        await scoped.execute(text("select 1"))
        started.set()
        await asyncio.sleep(30)
        return "never"

    @app.teardown_appcontext
    async def record(exc: BaseException | None) -> None:
        torn_down.append(exc)

    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, object]:
        for message in messages:
            return message
        await started.wait()
        return {"type": "http.disconnect"}

    async def send(message: object) -> None:
        pass

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/slow",
        "raw_path": b"/slow",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "extensions": {},
    }
    await asyncio.wait_for(app(scope, receive, send), 10)  # type: ignore[arg-type]
    assert len(torn_down) == 1 and isinstance(torn_down[0], asyncio.CancelledError)
    assert len(scoped.registry) == 0
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# k = 0 would cancel the task before its first step, when no code of ours can run: that
# case is covered by the weak registry (tests/test_sync.py::test_registry_is_weak).
@pytest.mark.parametrize("cancel_after", range(1, 9))
async def test_remove_finishes_despite_cancellation(
    app: Quart,
    scoped: async_scoped_session[AsyncSession],
    async_engine: AsyncEngine,
    cancel_after: int,
) -> None:
    """Cancelling remove() at any await point still closes; the cancel is re-raised."""
    async with app.app_context():
        session = scoped()
        await session.execute(text("select 1"))
        remover = asyncio.ensure_future(scoped.remove())
        for _ in range(cancel_after):
            await asyncio.sleep(0)
        if remover.cancel():  # False only if the close already finished
            with pytest.raises(asyncio.CancelledError):
                await remover
        assert len(scoped.registry) == 0
        assert not session.in_transaction()
        assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_close_timeout_invalidates(
    async_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A close that takes longer than the bound is abandoned and the connection invalidated."""
    session = AsyncSession(async_engine)
    await session.execute(text("select 1"))
    real_close = session.close

    async def stalled_close() -> None:
        await asyncio.sleep(30)
        await real_close()

    monkeypatch.setattr(session, "close", stalled_close)
    with caplog.at_level(logging.WARNING, logger="async_scoped_session_ext"):
        await asyncio.wait_for(close_to_completion(session, timeout=0.05), 10)
    assert "invalidated" in caplog.text
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_failing_close_is_logged_and_other_teardowns_run(
    app: Quart,
    async_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A close() that raises is logged, the entry is gone, and later teardowns still run."""
    scoped = async_scoped_session(async_sessionmaker(async_engine), app)
    ran: list[str] = []

    @app.teardown_appcontext  # Quart runs teardowns in registration order: after ours
    async def user_teardown(exc: BaseException | None) -> None:
        ran.append("user teardown")

    async def broken_close() -> None:
        raise OSError("network down")

    with caplog.at_level(logging.ERROR, logger="async_scoped_session_ext"):
        async with app.app_context():
            session = scoped()
            monkeypatch.setattr(session, "close", broken_close)
    assert ran == ["user teardown"]
    assert len(scoped.registry) == 0
    assert "network down" in caplog.text


async def test_double_teardown_is_harmless(
    app: Quart, scoped: async_scoped_session[AsyncSession]
) -> None:
    """Running the app's teardown twice for one context does nothing the second time."""
    async with app.app_context():
        await scoped.execute(text("select 1"))
        await app.do_teardown_appcontext(None)
        await app.do_teardown_appcontext(None)
        assert len(scoped.registry) == 0


def test_query_property_explains_itself(async_engine: AsyncEngine) -> None:
    """An async session has no query_property(); the error says what to use instead."""
    scoped = async_scoped_session(async_sessionmaker(async_engine))
    with pytest.raises(TypeError, match=r"await session\.scalars\(select\(Model\)\)"):
        scoped.query_property()


def test_init_app_twice_is_refused(app: Quart, scoped: async_scoped_session[AsyncSession]) -> None:
    """Initialising the same scoped session twice on one app is a clear error."""
    with pytest.raises(RuntimeError, match="already initialised"):
        scoped.init_app(app)


async def test_outside_app_context_raises(scoped: async_scoped_session[AsyncSession]) -> None:
    """With no app context, the error says how to push one."""
    with pytest.raises(RuntimeError, match=r"async with app.app_context\(\)"):
        scoped()
    with pytest.raises(RuntimeError, match="Working outside of application context"):
        await current_session.execute(text("select 1"))


async def test_uninitialised_app_is_refused(scoped: async_scoped_session[AsyncSession]) -> None:
    """A scoped session used in an app it was never initialised on raises, not leaks."""
    async with Quart("other").app_context():
        with pytest.raises(RuntimeError, match=r"Did you forget to call 'init_app\(app\)'"):
            scoped()


async def test_engines_of_the_factory_are_disposed_after_serving(
    app: Quart, async_engine: AsyncEngine
) -> None:
    """After serving, the app disposes the async engines its session factories reach: their
    connections belong to the serving loop, which is ending."""
    from sqlalchemy import event

    closed: list[object] = []
    event.listen(async_engine.sync_engine.pool, "close", lambda *args: closed.append(args))
    scoped = async_scoped_session(async_sessionmaker(async_engine), app)

    @app.get("/")
    async def view() -> str:
        return str(await scoped.scalar(text("select 1")))

    async with app.test_app():
        assert await (await app.test_client().get("/")).get_data(as_text=True) == "1"
        assert async_engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        assert closed == []
    assert len(closed) == 1, "the pooled connection was not closed after serving"
