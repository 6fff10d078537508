"""A todo-list JSON API on Quart and SQLite (aiosqlite), one ``AsyncSession`` per request.

Routes: ``GET /todos``, ``POST /todos`` (JSON ``{"title": ...}``), ``POST /todos/<id>/done``
and ``DELETE /todos/<id>``.

The database URL is ``create_app``'s argument, else the ``TODO_DATABASE_URL`` environment
variable, else ``sqlite+aiosqlite:///quart_todo.db`` (a file in the current directory).
Tables are created when the app starts serving, and the engine is disposed when it stops;
importing this module touches no database. Serve it from the repository root with::

    python examples/demo.py --serve          # SQLite file in a temporary directory
    python -m examples.quart_todo.app        # SQLite file as described above
"""

from __future__ import annotations

import os

from quart import Quart, abort, request
from sqlalchemy import ScalarResult, String, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.exceptions import HTTPException

from async_scoped_session_ext import async_scoped_session, current_session

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///quart_todo.db"

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


def create_app(database_url: str | None = None) -> Quart:
    """Build the app; the engine connects only once the app serves requests."""
    app = Quart(__name__)
    url = database_url or os.environ.get("TODO_DATABASE_URL") or DEFAULT_DATABASE_URL
    engine = create_async_engine(url)
    # Each app context (so each request) gets its own AsyncSession, closed at teardown.
    # expire_on_commit=False: reading a committed object must not lazy-load (no implicit
    # I/O in async code).
    async_scoped_session(async_sessionmaker(engine, expire_on_commit=False), app)

    @app.before_serving
    async def create_tables() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    @app.after_serving
    async def dispose_engine() -> None:
        await engine.dispose()

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> tuple[dict[str, str], int]:
        return {"error": error.description or error.name}, error.code or 500

    @app.get("/todos")
    async def list_todos() -> list[TodoJSON]:
        todos: ScalarResult[Todo] = await current_session.scalars(select(Todo).order_by(Todo.id))
        return [todo.to_json() for todo in todos]

    @app.post("/todos")
    async def add_todo() -> tuple[TodoJSON, int]:
        data = await request.get_json(silent=True)
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


async def get_todo_or_404(todo_id: int) -> Todo:
    """The todo with this id in the current session, or a 404 response."""
    todo: Todo | None = await current_session.get(Todo, todo_id)
    if todo is None:
        abort(404, f"There is no todo with id {todo_id}.")
    return todo


app = create_app()

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000, use_reloader=False)
