"""``myquartapp.py`` of docs/deployment.md: a Quart app for hypercorn or uvicorn, configured
from the environment. ``quart --app myquartapp db upgrade`` migrates the database, once, before the
server starts.
"""

from __future__ import annotations

import os

from quart import Quart, request
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from async_scoped_session_ext import async_scoped_session, current_session


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todos"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))


app = Quart(__name__)
app.config["SQLALCHEMY_ASYNC_ENGINES"] = {
    "default": {
        "url": os.environ["DATABASE_URL"],  # postgresql+asyncpg://user@host/db
        # One pool per worker process, shared by its requests.
        "pool_size": int(os.environ.get("POOL_SIZE", "5")),
        "max_overflow": int(os.environ.get("MAX_OVERFLOW", "10")),
        "pool_pre_ping": True,
        "connect_args": {"server_settings": {"application_name": "myquartapp"}},
    }
}
# The engine is made on first use in each worker, and disposed after serving.
asession: async_scoped_session[AsyncSession] = async_scoped_session(
    app=app, session_options={"expire_on_commit": False}, metadata=Base.metadata
)


@app.post("/todos")
async def add_todo() -> tuple[dict[str, object], int]:
    todo = Todo(title=str((await request.get_json() or {})["title"]))
    current_session.add(todo)
    await current_session.commit()
    return {"id": todo.id, "title": todo.title}, 201


@app.get("/todos")
async def list_todos() -> list[str]:
    return list(await current_session.scalars(select(Todo.title).order_by(Todo.id)))
