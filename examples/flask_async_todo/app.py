"""A todo-list JSON API on Flask ``async def`` views and SQLite (aiosqlite).

The same API as ``examples/quart_todo``: ``GET /todos``, ``POST /todos`` (JSON
``{"title": ...}``), ``POST /todos/<id>/done`` and ``DELETE /todos/<id>``, plus a
``flask count`` command that prints the number of todos. Each app context (so each request
and each CLI command) gets its own ``AsyncSession``, closed at teardown. The library runs
all of the app's async code on one shared event loop per process, so the engine keeps its
connection pool across requests (with asyncpg too).

The database URL is ``create_app``'s argument, else the ``TODO_DATABASE_URL`` environment
variable, else ``sqlite+aiosqlite:///flask_async_todo.db`` (a file in the current
directory). Tables are created by ``create_app``, so this module has no module-level
``app``: the ``flask`` command finds the factory. From the repository root::

    flask --app examples.flask_async_todo.app run      # serve on 127.0.0.1:5000
    flask --app examples.flask_async_todo.app count    # print the number of todos
"""

from __future__ import annotations

import os
import typing as t

import click
from flask import Flask, abort, request
from sqlalchemy import ScalarResult, String, func, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.exceptions import HTTPException

from async_scoped_session_ext import async_scoped_session, current_session

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///flask_async_todo.db"
ENGINE_KEY = "flask_async_todo.engine"
SESSION_KEY = "flask_async_todo.session"

TodoJSON = dict[str, int | str | bool]


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    done: Mapped[bool] = mapped_column(default=False)

    def to_json(self) -> TodoJSON:
        return {"id": self.id, "title": self.title, "done": self.done}


def create_app(database_url: str | None = None) -> Flask:
    """Build the app and create its tables (call it from sync code, not from async code)."""
    app = Flask(__name__)
    url = database_url or os.environ.get("TODO_DATABASE_URL") or DEFAULT_DATABASE_URL
    engine = create_async_engine(url)
    # Each app context gets its own AsyncSession, closed at teardown. expire_on_commit=False:
    # reading a committed object must not lazy-load (no implicit I/O in async code).
    asession = async_scoped_session(async_sessionmaker(engine, expire_on_commit=False), app)
    app.extensions[ENGINE_KEY] = engine
    app.extensions[SESSION_KEY] = asession

    async def create_tables() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    # run() awaits on the shared loop, where the views will use the engine's pool.
    asession.run(create_tables())

    @app.cli.command("count")
    def count() -> None:
        """Print the number of todos."""
        click.echo(asession.run(count_todos()))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[dict[str, str], int]:
        return {"error": error.description or error.name}, error.code or 500

    @app.get("/todos")
    async def list_todos() -> list[TodoJSON]:
        todos: ScalarResult[Todo] = await current_session.scalars(select(Todo).order_by(Todo.id))
        return [todo.to_json() for todo in todos]

    @app.post("/todos")
    async def add_todo() -> tuple[TodoJSON, int]:
        data = request.get_json(silent=True)
        title = data.get("title") if isinstance(data, dict) else None
        if not isinstance(title, str) or not 0 < len(title.strip()) <= 200:
            abort(400, 'Send JSON {"title": "..."} with a title of 1 to 200 characters.')
        todo = Todo(title=title.strip())
        current_session.add(todo)
        await current_session.commit()
        return todo.to_json(), 201

    @app.post("/todos/<int:todo_id>/done")
    async def mark_done(todo_id: int) -> TodoJSON:
        todo = await get_todo_or_404(todo_id)
        todo.done = True
        await current_session.commit()
        return todo.to_json()

    @app.delete("/todos/<int:todo_id>")
    async def delete_todo(todo_id: int) -> tuple[str, int]:
        todo = await get_todo_or_404(todo_id)
        await current_session.delete(todo)
        await current_session.commit()
        return "", 204

    return app


async def count_todos() -> int:
    """The number of todos, read through the current app context's session."""
    count: int | None = await current_session.scalar(select(func.count()).select_from(Todo))
    return count or 0


async def get_todo_or_404(todo_id: int) -> Todo:
    """The todo with this id in the current session, or a 404 response."""
    todo: Todo | None = await current_session.get(Todo, todo_id)
    if todo is None:
        abort(404, f"There is no todo with id {todo_id}.")
    return todo


def engine_of(app: Flask) -> AsyncEngine:
    """The engine ``create_app`` made for *app*."""
    return t.cast(AsyncEngine, app.extensions[ENGINE_KEY])


def dispose_engine(app: Flask) -> None:
    """Close the pooled connections of *app*'s engine, on the shared loop they belong to.

    Call it from sync code when you are done with the app; the library also disposes the
    engine when the process exits.
    """
    asession = t.cast("async_scoped_session[AsyncSession]", app.extensions[SESSION_KEY])
    asession.run(engine_of(app).dispose())
