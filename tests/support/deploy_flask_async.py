"""The Flask app of docs/deployment.md with async views, on asyncpg, for gunicorn gthread.

The same as ``deploy_flask.py`` with ``async_scoped_session``: every async view of a worker
runs on the library's one event loop in that worker, where the worker's pool lives.
"""

from __future__ import annotations

import os

from flask import Flask, request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from async_scoped_session_ext import async_scoped_session, current_session

from .deploy_flask import Base, Todo

app = Flask(__name__)
app.config["SQLALCHEMY_ASYNC_ENGINES"] = {
    "default": {
        "url": os.environ["DATABASE_URL"],  # postgresql+asyncpg://user@host/db
        "pool_size": int(os.environ.get("POOL_SIZE", "5")),
        "max_overflow": int(os.environ.get("MAX_OVERFLOW", "10")),
        "pool_pre_ping": True,
        "connect_args": {"server_settings": {"application_name": "myapp"}},
    }
}
asession: async_scoped_session[AsyncSession] = async_scoped_session(
    app=app, session_options={"expire_on_commit": False}, metadata=Base.metadata
)


@app.post("/todos")
async def add_todo() -> tuple[dict[str, object], int]:
    todo = Todo(title=str((request.get_json() or {})["title"]))
    current_session.add(todo)
    await current_session.commit()
    return {"id": todo.id, "title": todo.title}, 201


@app.get("/todos")
async def list_todos() -> list[str]:
    return list(await current_session.scalars(select(Todo.title).order_by(Todo.id)))
