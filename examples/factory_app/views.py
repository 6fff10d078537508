"""``GET /todos`` and ``POST /todos`` (JSON ``{"title": ...}``)."""

from __future__ import annotations

from flask import Blueprint, abort, request
from sqlalchemy import select

from .db import session
from .models import Todo, TodoJSON

bp = Blueprint("todos", __name__)


@bp.get("/todos")
def list_todos() -> list[TodoJSON]:
    return [todo.to_json() for todo in session.scalars(select(Todo).order_by(Todo.id))]


@bp.post("/todos")
def add_todo() -> tuple[TodoJSON, int]:
    data = request.get_json(silent=True)
    title = data.get("title") if isinstance(data, dict) else None
    if not isinstance(title, str) or not 0 < len(title.strip()) <= 200:
        abort(400, 'Send JSON {"title": "..."} with a title of 1 to 200 characters.')
    todo = Todo(title=title.strip())
    session.add(todo)
    session.commit()
    return todo.to_json(), 201
