"""A sync-only install has no greenlet: the package imports and sync apps run without it."""

from __future__ import annotations

from pathlib import Path

from .support.scripts import run_script

# greenlet blocked as if not installed (None in sys.modules makes its import fail).
WITHOUT_GREENLET = """
import sys
sys.modules["greenlet"] = None

import async_scoped_session_ext.fixtures
import async_scoped_session_ext.replicas
import async_scoped_session_ext.tenants
import async_scoped_session_ext.testing
from async_scoped_session_ext import EngineRegistry, current_session, flask_scoped_session
from examples.flask_todo.app import create_app, engine_of

app = create_app(f"sqlite:///{sys.argv[1]}/todo.db")
client = app.test_client()
print(client.post("/todos", json={"title": "a"}).json["title"], client.get("/todos").json)
with async_scoped_session_ext.testing.isolate(app):
    print(client.post("/todos", json={"title": "b"}).status_code)
print(len(client.get("/todos").json))
engine_of(app).dispose()

from sqlalchemy.ext.asyncio import create_async_engine
from async_scoped_session_ext import async_scoped_session

async def use():
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.connect():
        pass

import asyncio
try:
    asyncio.run(use())
except (ImportError, ValueError) as error:  # SQLAlchemy 2.1: ImportError; 2.0: ValueError
    print("async use:", type(error).__name__, "greenlet" in str(error))
"""


def test_sync_app_runs_without_greenlet(tmp_path: Path) -> None:
    """With greenlet missing, every module imports and the sync example app (and its test
    isolation) works; async code fails only when it runs, with an error naming greenlet."""
    output = run_script(WITHOUT_GREENLET, str(tmp_path)).splitlines()
    assert output[0] == "a [{'done': False, 'id': 1, 'title': 'a'}]"
    assert output[1:3] == ["201", "1"]
    assert output[3].startswith("async use: ") and output[3].endswith(" True")
