"""``myapp.py`` of docs/deployment.md: a sync Flask app for gunicorn, configured from the
environment. ``flask --app myapp db upgrade`` migrates the database, once, before the server starts.
"""

from __future__ import annotations

import os

from flask import Flask, request
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from async_scoped_session_ext import current_session, flask_scoped_session


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todos"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))


app = Flask(__name__)
app.config["SQLALCHEMY_ENGINES"] = {
    "default": {
        "url": os.environ["DATABASE_URL"],  # postgresql+psycopg://user@host/db
        # One pool per worker process, shared by its threads (or greenlets).
        "pool_size": int(os.environ.get("POOL_SIZE", "5")),
        "max_overflow": int(os.environ.get("MAX_OVERFLOW", "10")),
        "pool_pre_ping": True,
        "connect_args": {"application_name": "myapp"},  # find its backends in pg_stat_activity
    }
}
# No engine is made here: each worker makes its own on first use, from the config above.
session = flask_scoped_session(
    app=app, session_options={"expire_on_commit": False}, metadata=Base.metadata
)


@app.post("/todos")
def add_todo() -> tuple[dict[str, object], int]:
    todo = Todo(title=str((request.get_json() or {})["title"]))
    current_session.add(todo)
    current_session.commit()
    return {"id": todo.id, "title": todo.title}, 201


@app.get("/todos")
def list_todos() -> list[str]:
    return list(current_session.scalars(select(Todo.title).order_by(Todo.id)))
