"""A context pushed and never popped does not keep its session, or its connection, forever.

The context's record goes with the context: once nothing else holds the context, the garbage
collector takes it, and the library closes its sessions (with a ``ResourceWarning`` that
names the missed teardown) on the event loop they were used on. Measured on asyncpg, whose
connections used to keep the context they were opened in alive (DESIGN fact 10).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import time
import typing as t
import uuid

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from async_scoped_session_ext import async_scoped_session, current_session
from async_scoped_session_ext._runner import runner

from .support.databases import postgres_url, require_postgres
from .support.environment import needs_quart

CONTEXTS = 20


@pytest.fixture(autouse=True)
def collect_by_hand() -> t.Iterator[None]:
    """No automatic collection while contexts are being forgotten: the test collects."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def idle_in_transaction(app_name: str) -> int:
    """How many backends named *app_name* are idle in a transaction."""
    engine = create_engine(postgres_url("psycopg"))
    try:
        with engine.connect() as conn:
            query = (
                "select count(*) from pg_stat_activity"
                " where application_name = :name and state = 'idle in transaction'"
            )
            count: int = conn.execute(text(query), {"name": app_name}).scalar_one()
            return count
    finally:
        engine.dispose()


def asyncpg_engine(app_name: str) -> AsyncEngine:
    """A pooled asyncpg engine big enough for every context at once, its backends named."""
    require_postgres()
    return create_async_engine(
        postgres_url("asyncpg"),
        pool_size=CONTEXTS,
        connect_args={"server_settings": {"application_name": app_name}},
    )


def collect_reclaiming(expected: int) -> None:
    """Run the garbage collector; each forgotten context warns once about its teardown."""
    with pytest.warns(ResourceWarning, match="never torn down") as warned:
        gc.collect()
    assert len([w for w in warned if issubclass(w.category, ResourceWarning)]) == expected


@needs_quart
async def test_never_popped_quart_contexts_release_their_connections() -> None:
    """Twenty Quart contexts pushed and never popped leave no backend idle in transaction."""
    from quart import Quart

    app_name = f"asse-{uuid.uuid4().hex[:12]}"
    engine = asyncpg_engine(app_name)
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(engine), app)

    async def push_and_forget() -> None:
        await app.app_context().push()  # never popped
        await current_session.execute(text("select 1"))  # a transaction begins

    try:
        for _ in range(CONTEXTS):
            await asyncio.create_task(push_and_forget())
        assert engine.pool.checkedout() == CONTEXTS  # type: ignore[attr-defined]
        assert idle_in_transaction(app_name) == CONTEXTS
        await asyncio.sleep(0.05)  # callbacks the last task scheduled hold its context
        collect_reclaiming(CONTEXTS)
        async with asyncio.timeout(10):
            while engine.pool.checkedout():  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)  # the closes run on this loop
        assert len(scoped.registry) == 0
        assert idle_in_transaction(app_name) == 0
    finally:
        await engine.dispose()


def test_never_popped_flask_contexts_release_their_connections() -> None:
    """Twenty Flask contexts pushed and never popped, their async sessions used through
    ``run()`` on the shared loop, leave no backend idle in transaction."""
    app_name = f"asse-{uuid.uuid4().hex[:12]}"
    engine = asyncpg_engine(app_name)
    app = Flask(__name__)
    scoped = async_scoped_session(async_sessionmaker(engine), app)

    async def begin() -> None:
        await current_session.execute(text("select 1"))  # a transaction begins

    def push_and_forget() -> None:
        app.app_context().push()  # never popped
        scoped.run(begin())

    try:
        for _ in range(CONTEXTS):
            contextvars.copy_context().run(push_and_forget)
        assert engine.pool.checkedout() == CONTEXTS  # type: ignore[attr-defined]
        assert idle_in_transaction(app_name) == CONTEXTS
        collect_reclaiming(CONTEXTS)
        deadline = time.monotonic() + 10
        while engine.pool.checkedout():  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the sessions were not closed"
            time.sleep(0.01)  # the closes run on the shared loop
        assert len(scoped.registry) == 0
        assert idle_in_transaction(app_name) == 0
    finally:
        runner.run(engine.dispose())
