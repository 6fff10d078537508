"""A todo-list JSON API on sync Flask and SQLite (pysqlite), one ``Session`` per request.

The same API as ``examples/quart_todo``: ``GET /todos``, ``POST /todos`` (JSON
``{"title": ...}``), ``POST /todos/<id>/done`` and ``DELETE /todos/<id>``. It is written the
Flask-SQLAlchemy-Session way: ``flask_scoped_session(sessionmaker(bind=engine), app)``,
``current_session`` in views, and ``Base.query = session.query_property()``.

The database URL is ``create_app``'s argument, else the ``TODO_DATABASE_URL`` environment
variable, else ``sqlite:///flask_todo.db`` (a file in the current directory). Tables are
created by ``create_app``, so this module has no module-level ``app``: the ``flask`` command
finds the factory. Serve it on 127.0.0.1:5000 from the repository root with::

    flask --app examples.flask_todo.app run
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask, abort, request
from sqlalchemy import Engine, String, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    QueryPropertyDescriptor,
    mapped_column,
    sessionmaker,
)
from werkzeug.exceptions import HTTPException

from async_scoped_session_ext import current_session, flask_scoped_session

DEFAULT_DATABASE_URL = "sqlite:///flask_todo.db"
ENGINE_KEY = "flask_todo.engine"

TodoJSON = dict[str, int | str | bool]


class Base(DeclarativeBase):
    # ``Model.query`` as in Flask-SQLAlchemy-Session; set by create_app, which makes it
    # follow the scoped session of the app created last.
    query: t.ClassVar[QueryPropertyDescriptor]


class Todo(Base):
    __tablename__ = "todo"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    done: Mapped[bool] = mapped_column(default=False)

    def to_json(self) -> TodoJSON:
        return {"id": self.id, "title": self.title, "done": self.done}


def create_app(database_url: str | None = None) -> Flask:
    """Build the app and create its tables."""
    app = Flask(__name__)
    url = database_url or os.environ.get("TODO_DATABASE_URL") or DEFAULT_DATABASE_URL
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    app.extensions[ENGINE_KEY] = engine
    # Each app context (so each request) gets its own Session, removed at teardown.
    session = flask_scoped_session(sessionmaker(bind=engine), app)
    Base.query = session.query_property()

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[dict[str, str], int]:
        return {"error": error.description or error.name}, error.code or 500

    @app.get("/todos")
    def list_todos() -> list[TodoJSON]:
        return [todo.to_json() for todo in Todo.query.order_by(Todo.id)]

    @app.post("/todos")
    def add_todo() -> tuple[TodoJSON, int]:
        data = request.get_json(silent=True)
        title = data.get("title") if isinstance(data, dict) else None
        if not isinstance(title, str) or not 0 < len(title.strip()) <= 200:
            abort(400, 'Send JSON {"title": "..."} with a title of 1 to 200 characters.')
        todo = Todo(title=title.strip())
        current_session.add(todo)
        current_session.commit()
        return todo.to_json(), 201

    @app.post("/todos/<int:todo_id>/done")
    def mark_done(todo_id: int) -> TodoJSON:
        todo = get_todo_or_404(todo_id)
        todo.done = True
        current_session.commit()
        return todo.to_json()

    @app.delete("/todos/<int:todo_id>")
    def delete_todo(todo_id: int) -> tuple[str, int]:
        current_session.delete(get_todo_or_404(todo_id))
        current_session.commit()
        return "", 204

    return app


def get_todo_or_404(todo_id: int) -> Todo:
    """The todo with this id in the current session, or a 404 response."""
    todo: Todo | None = current_session.scalar(select(Todo).where(Todo.id == todo_id))
    if todo is None:
        abort(404, f"There is no todo with id {todo_id}.")
    return todo


def engine_of(app: Flask) -> Engine:
    """The engine ``create_app`` made for *app*; dispose it when you are done with the app."""
    return t.cast(Engine, app.extensions[ENGINE_KEY])
