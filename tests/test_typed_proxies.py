"""``current_sync_session`` and ``current_async_session``: the typed views of
``current_session``, each the app's default scoped session of its kind."""

from __future__ import annotations

import collections.abc as cabc
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import (
    async_scoped_session,
    current_async_session,
    current_session,
    current_sync_session,
    flask_scoped_session,
)

from .support.databases import database_url, engine_on_shared_loop
from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo

if HAS_QUART:
    from quart import Quart


def _scoped(proxy: object) -> object:
    """The scoped session a typed proxy stands for right now."""
    return t.cast(t.Any, proxy)._get_current_object()


@pytest.fixture
def shared_loop_engine(async_backend: str, tmp_path: Path) -> cabc.Iterator[AsyncEngine]:
    """An async engine with fresh tables, its connections on the shared loop."""
    with engine_on_shared_loop(database_url(async_backend, tmp_path)) as engine:
        yield engine


def test_flask_app_with_both_kinds(sync_engine: Engine, shared_loop_engine: AsyncEngine) -> None:
    """In one Flask app, a sync view reads through ``current_sync_session`` and an async
    view through ``current_async_session``; each is the default of its kind, whatever
    ``current_session`` picks there."""
    app = Flask(__name__)
    sync = flask_scoped_session(sessionmaker(sync_engine), app)
    asession = async_scoped_session(async_sessionmaker(shared_loop_engine), app)
    with sync_engine.begin() as conn:
        conn.execute(insert(Todo), {"id": 1, "title": "sync row"})

    async def add_async_row() -> None:
        async with shared_loop_engine.begin() as conn:
            await conn.execute(insert(Todo), {"id": 2, "title": "async row"})

    asession.run(add_async_row())

    @app.get("/sync")
    def sync_view() -> dict[str, object]:
        todo = current_sync_session.get(Todo, 1)
        assert todo is not None
        return {
            "title": todo.title,
            "same": current_sync_session() is current_session(),
            "async_view": _scoped(current_async_session) is asession,
        }

    @app.get("/async")
    async def async_view() -> dict[str, object]:
        todo = await current_async_session.get(Todo, 2)
        assert todo is not None
        return {
            "title": todo.title,
            "same": current_async_session() is current_session(),
            "sync_view": _scoped(current_sync_session) is sync,
        }

    client = app.test_client()
    assert client.get("/sync").json == {"title": "sync row", "same": True, "async_view": True}
    assert client.get("/async").json == {"title": "async row", "same": True, "sync_view": True}


@needs_quart
async def test_quart_view_awaits_current_async_session(async_engine: AsyncEngine) -> None:
    """In a Quart view, ``await current_async_session.scalars(...)`` runs on the request's
    session; the proxy resolves on every access, after the app is set up."""
    app = Quart(__name__)
    async_scoped_session(async_sessionmaker(async_engine, expire_on_commit=False), app)

    @app.post("/todos")
    async def add() -> dict[str, object]:
        current_async_session.add(Todo(title="typed"))
        await current_async_session.commit()
        titles = await current_async_session.scalars(select(Todo.title))
        return {"titles": list(titles)}

    response = await app.test_client().post("/todos")
    assert (await response.get_json()) == {"titles": ["typed"]}


def test_an_app_without_that_kind_says_which_to_use(sync_engine: Engine) -> None:
    """A sync-only app has no default async scoped session: ``current_async_session``
    says so and names the proxies that work; outside a context it asks for one."""
    app = Flask(__name__)
    flask_scoped_session(sessionmaker(sync_engine), app)
    with app.app_context():
        with pytest.raises(AttributeError, match="has no async_scoped_session") as raised:
            current_async_session.get  # noqa: B018 - the lookup is what raises
        assert "current_sync_session" in str(raised.value)
        assert current_sync_session.execute(select(1)).scalar_one() == 1
        current_sync_session.remove()
    with pytest.raises(RuntimeError, match="application context"):
        current_sync_session.get  # noqa: B018


def test_a_flask_app_without_sync_sessions_says_so(shared_loop_engine: AsyncEngine) -> None:
    """An async-only Flask app has no default sync scoped session."""
    app = Flask(__name__)
    async_scoped_session(async_sessionmaker(shared_loop_engine), app)
    with app.app_context():
        with pytest.raises(AttributeError, match="has no flask_scoped_session"):
            current_sync_session()
