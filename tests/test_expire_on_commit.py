"""Async session factories made from the config, or by an async ``EngineRegistry``, default to
``expire_on_commit=False``."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from sqlalchemy import inspect

from async_scoped_session_ext import (
    EngineRegistry,
    async_scoped_session,
    current_session,
    flask_scoped_session,
)

from .support import config_apps
from .support.engines import disposing, fresh_tables
from .support.environment import needs_quart
from .support.models import Todo

async_url = config_apps.async_url  # a fixture: aiosqlite and asyncpg, fresh tables
RESTORED = {"expire_on_commit": True}


async def add_and_read_id() -> dict[str, object]:
    """A view's body: add a row, commit, then read its new id unless it expired.

    Reading an expired attribute would need a lazy load: ``MissingGreenlet``, a 500 (and,
    on aiosqlite, a never-awaited coroutine that fails a later test), so it is not read.
    """
    todo = Todo(title="new")
    current_session.add(todo)
    await current_session.commit()
    if inspect(todo).expired:
        return {"expired": True}
    return {"expired": False, "id": todo.id}


def flask_app(url: str, options: dict[str, t.Any]) -> Flask:
    app = Flask(__name__)
    app.config.update(TESTING=True, SQLALCHEMY_ASYNC_ENGINES={"default": url})
    async_scoped_session(session_options=options).init_app(app)
    app.post("/todos")(add_and_read_id)
    return app


def test_flask_async_view_reads_the_id_after_commit(async_url: str) -> None:
    """Flask async view, no session options: the new row's id is readable after commit."""
    with disposing(flask_app(async_url, {})) as app:
        assert app.test_client().post("/todos").json == {"expired": False, "id": 1}


def test_expire_on_commit_true_restores_sqlalchemy_default(async_url: str) -> None:
    """``session_options={"expire_on_commit": True}``: the committed row is expired again."""
    with disposing(flask_app(async_url, RESTORED)) as app:
        assert app.test_client().post("/todos").json == {"expired": True}


@needs_quart
@pytest.mark.parametrize(
    ("options", "expected"), [({}, {"expired": False, "id": 1}), (RESTORED, {"expired": True})]
)
async def test_quart_view_after_commit(
    async_url: str, options: dict[str, t.Any], expected: dict[str, object]
) -> None:
    """Quart: the id is readable after commit by default; not with the option restored."""
    from quart import Quart

    app = Quart(__name__)
    app.config.update(SQLALCHEMY_ASYNC_ENGINES={"default": async_url})
    async_scoped_session(session_options=options).init_app(app)
    app.post("/todos")(add_and_read_id)
    async with app.test_app() as test_app:
        response = await test_app.test_client().post("/todos")
        assert await response.get_json() == expected


def test_sync_factory_keeps_sqlalchemy_default(tmp_path: t.Any) -> None:
    """Sync factories made from the config keep ``expire_on_commit=True``."""
    with fresh_tables(f"sqlite:///{tmp_path / 'sync.db'}") as url:
        app = Flask(__name__)
        app.config.update(SQLALCHEMY_ENGINES={"default": url})
        flask_scoped_session(app=app)
        with disposing(app), app.app_context():
            todo = Todo(title="new")
            current_session.add(todo)
            current_session.commit()
            assert inspect(todo).expired
            assert todo.id == 1  # reloaded on access


def registry_app(url: str, options: dict[str, t.Any] | None) -> tuple[Flask, EngineRegistry]:
    """A Flask app whose async view adds a row through an async ``EngineRegistry``."""
    app = Flask(__name__)
    registry = EngineRegistry(lambda key: url, is_async=True, session_options=options, app=app)

    @app.post("/todos")
    async def add() -> dict[str, object]:
        session = registry["one"]
        assert isinstance(session, async_scoped_session)
        todo = Todo(title="new")
        session.add(todo)
        await session.commit()
        if inspect(todo).expired:  # no lazy load: it would raise MissingGreenlet
            return {"expired": True}
        return {"expired": False, "id": todo.id}

    return app, registry


@pytest.mark.parametrize(
    ("options", "expected"), [(None, {"expired": False, "id": 1}), (RESTORED, {"expired": True})]
)
def test_async_engine_registry_defaults_like_the_config(
    async_url: str, options: dict[str, t.Any] | None, expected: dict[str, object]
) -> None:
    """An async ``EngineRegistry``'s sessions keep committed objects loaded by default, as
    the config's do; its ``session_options`` restore SQLAlchemy's default."""
    app, registry = registry_app(async_url, options)
    try:
        assert app.test_client().post("/todos").json == expected
    finally:
        registry.close()
