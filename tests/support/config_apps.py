"""App factories whose scoped sessions get their engines from ``app.config``.

Shared by ``tests/test_engines.py``, ``tests/test_app_factory.py`` and
``tests/test_cli_commands.py``. The scoped sessions are created at module level without a
session factory, as in an app factory project; ``create_*_app(config)`` initialises them on
each new app. The engines come from ``SQLALCHEMY_ENGINES`` / ``SQLALCHEMY_ASYNC_ENGINES`` on
first use. ``sync_url`` and ``async_url`` are fixtures: a test module imports them to use them.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t
from pathlib import Path

import click
import pytest
from flask import Flask
from sqlalchemy import func, inspect, select

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session

from .databases import database_url, postgres_url, require_postgres
from .engines import fresh_tables
from .environment import HAS_QUART
from .models import Todo

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

Config = cabc.Mapping[str, t.Any]

# expire_on_commit=False: a committed object stays readable without a new query.
session = flask_scoped_session(session_options={"expire_on_commit": False})
asession = async_scoped_session(session_options={"expire_on_commit": False})
quart_session = flask_scoped_session()
quart_asession = async_scoped_session(session_options={"expire_on_commit": False})


def count_query() -> t.Any:
    return select(func.count()).select_from(Todo)


def create_app(config: Config) -> Flask:
    """A sync Flask app factory."""
    app = Flask(__name__)
    app.config.from_mapping(TESTING=True)
    app.config.from_mapping(config)
    session.init_app(app)

    @app.post("/todos/<title>")
    def add(title: str) -> dict[str, object]:
        todo = Todo(title=title)
        current_session.add(todo)
        current_session.commit()
        # expire_on_commit=False: the attributes are still loaded after the commit.
        return {"title": todo.title, "expired": inspect(todo).expired}

    @app.get("/todos")
    def list_todos() -> list[str]:
        return [todo.title for todo in current_session.scalars(select(Todo).order_by(Todo.id))]

    @app.cli.command("add")
    @click.argument("title")
    def add_command(title: str) -> None:
        current_session.add(Todo(title=title))
        current_session.commit()
        click.echo(f"{current_session.scalar(count_query())} todos")

    return app


async def add_todo(title: str) -> int:
    """Add a todo with the current (async) session, commit, and count the todos."""
    current_session.add(Todo(title=title))
    await current_session.commit()
    return int(await current_session.scalar(count_query()))


async def list_titles() -> list[str]:
    return [todo.title for todo in await current_session.scalars(select(Todo).order_by(Todo.id))]


def create_async_app(config: Config) -> Flask:
    """A Flask app factory with async views."""
    app = Flask(__name__)
    app.config.from_mapping(TESTING=True)
    app.config.from_mapping(config)
    asession.init_app(app)

    @app.post("/todos/<title>")
    async def add(title: str) -> dict[str, object]:
        todo = Todo(title=title)
        current_session.add(todo)
        await current_session.commit()
        # Expired attributes would need a lazy load, which cannot happen here.
        return {"title": todo.title, "expired": inspect(todo).expired}

    @app.get("/todos")
    async def list_todos() -> list[str]:
        return await list_titles()

    @app.cli.command("add")
    @click.argument("title")
    def add_command(title: str) -> None:
        click.echo(f"{asession.run(add_todo(title))} todos")

    return app


def create_quart_app(config: Config) -> Quart:
    """A Quart app factory with an async and a sync scoped session."""
    app = Quart(__name__)
    app.config.from_mapping(TESTING=True)
    app.config.from_mapping(config)
    quart_asession.init_app(app)
    quart_session.init_app(app)

    @app.post("/todos/<title>")
    async def add(title: str) -> dict[str, object]:
        todo = Todo(title=title)
        quart_asession.add(todo)
        await quart_asession.commit()
        return {"title": todo.title, "expired": inspect(todo).expired}

    @app.get("/todos")
    async def list_todos() -> list[str]:
        return await list_titles()

    @app.cli.command("add-sync", with_appcontext=True)
    @click.argument("title")
    def add_sync(title: str) -> None:
        # In a Quart command an event loop runs (Quart's own asyncio.run), so with both
        # kinds initialised current_session is the async one: use the sync object itself.
        quart_session.add(Todo(title=title))
        quart_session.commit()
        click.echo(f"{quart_session.scalar(count_query())} todos")

    @app.cli.command("add-async", with_appcontext=True)
    @click.argument("title")
    def add_async(title: str) -> None:
        click.echo(f"{quart_asession.run(add_todo(title))} todos")

    return app


@pytest.fixture
def sync_url(sync_backend: str, tmp_path: Path) -> cabc.Iterator[str]:
    """A sync URL (pysqlite file or psycopg) of a database with fresh tables."""
    with fresh_tables(database_url(sync_backend, tmp_path)) as url:
        yield url


@pytest.fixture
def async_url(async_backend: str, tmp_path: Path) -> cabc.Iterator[str]:
    """An async URL (aiosqlite file or asyncpg) of a database with fresh tables."""
    with fresh_tables(database_url(async_backend, tmp_path)) as url:
        yield url


def second_url(backend: str, tmp_path: Path, is_async: bool) -> str:
    """Another database: a second SQLite file, or PostgreSQL."""
    if backend == "sqlite":
        driver = "+aiosqlite" if is_async else ""
        return f"sqlite{driver}:///{tmp_path / 'second.db'}"
    require_postgres()
    return postgres_url("asyncpg" if is_async else "psycopg")


# Configs that work: a test of a config mistake fixes its config with one.
GOOD_SYNC_CONFIG = {"SQLALCHEMY_ENGINES": {"default": "sqlite://"}}
GOOD_ASYNC_CONFIG = {"SQLALCHEMY_ASYNC_ENGINES": {"default": "sqlite+aiosqlite://"}}
