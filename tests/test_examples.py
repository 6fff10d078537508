"""The example apps: the three todo APIs through their test clients, and the demo script."""

from __future__ import annotations

import collections.abc as cabc
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from examples.flask_async_todo.app import create_app as create_flask_async_app
from examples.flask_async_todo.app import dispose_engine
from examples.flask_async_todo.app import engine_of as async_engine_of
from examples.flask_todo.app import create_app as create_flask_app
from examples.flask_todo.app import engine_of

from .support.environment import HAS_QUART, child_environ, needs_quart

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart.typing import TestClientProtocol as QuartClient

    from examples.quart_todo.app import create_app as create_quart_app

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO = REPO_ROOT / "examples" / "demo.py"


@pytest.fixture
def quart_db_url(tmp_path: Path) -> str:
    """An aiosqlite URL for a file in the test's temporary directory."""
    return f"sqlite+aiosqlite:///{tmp_path / 'quart_todo.db'}"


@pytest.fixture
async def quart_client(quart_db_url: str) -> cabc.AsyncIterator[QuartClient]:
    """A test client of the Quart example, served (before/after_serving run around it)."""
    app = create_quart_app(quart_db_url)
    async with app.test_app() as test_app:
        yield test_app.test_client()


@pytest.fixture
def flask_app(tmp_path: Path) -> cabc.Iterator[Flask]:
    """The Flask example on a pysqlite file; its engine is disposed afterwards."""
    app = create_flask_app(f"sqlite:///{tmp_path / 'flask_todo.db'}")
    try:
        yield app
    finally:
        engine_of(app).dispose()


@pytest.fixture
def flask_client(flask_app: Flask) -> FlaskClient:
    """A test client of the Flask example."""
    return flask_app.test_client()


@needs_quart
async def test_quart_todo_lifecycle(quart_client: QuartClient) -> None:
    """Todos can be added, marked done, deleted and listed in the Quart example."""
    for title in ("Buy milk", "Write the README"):
        response = await quart_client.post("/todos", json={"title": title})
        assert response.status_code == 201
    assert await response.get_json() == {"id": 2, "title": "Write the README", "done": False}

    response = await quart_client.post("/todos/1/done")
    assert response.status_code == 200
    assert await response.get_json() == {"id": 1, "title": "Buy milk", "done": True}

    response = await quart_client.delete("/todos/2")
    assert response.status_code == 204
    assert await response.get_data() == b""

    response = await quart_client.get("/todos")
    assert response.status_code == 200
    assert await response.get_json() == [{"id": 1, "title": "Buy milk", "done": True}]


@needs_quart
async def test_quart_todo_errors(quart_client: QuartClient) -> None:
    """Unknown ids answer 404 and a missing or empty title 400, all as JSON errors."""
    for response in (
        await quart_client.post("/todos/7/done"),
        await quart_client.delete("/todos/7"),
    ):
        assert response.status_code == 404
        assert await response.get_json() == {"error": "There is no todo with id 7."}
    for body in ({}, {"title": "  "}, {"title": 3}):
        response = await quart_client.post("/todos", json=body)
        assert response.status_code == 400
        assert "title" in (await response.get_json())["error"]
    response = await quart_client.get("/todos")
    assert await response.get_json() == []


@needs_quart
async def test_quart_todos_survive_restart(quart_db_url: str, tmp_path: Path) -> None:
    """The app touches the database only while serving, and committed todos persist."""
    app = create_quart_app(quart_db_url)
    assert not (tmp_path / "quart_todo.db").exists()
    async with app.test_app() as test_app:
        response = await test_app.test_client().post("/todos", json={"title": "Keep me"})
        assert response.status_code == 201
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/todos")
        assert await response.get_json() == [{"id": 1, "title": "Keep me", "done": False}]


@needs_quart
async def test_quart_database_url_from_environment(
    quart_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an argument, create_app uses the TODO_DATABASE_URL environment variable."""
    monkeypatch.setenv("TODO_DATABASE_URL", quart_db_url)
    app = create_quart_app()
    async with app.test_app() as test_app:
        response = await test_app.test_client().post("/todos", json={"title": "From env"})
        assert response.status_code == 201
    assert (tmp_path / "quart_todo.db").exists()


def test_flask_todo_lifecycle(flask_client: FlaskClient) -> None:
    """Todos can be added, marked done, deleted and listed (via Base.query) in Flask."""
    for title in ("Buy milk", "Write the README"):
        response = flask_client.post("/todos", json={"title": title})
        assert response.status_code == 201
    assert response.json == {"id": 2, "title": "Write the README", "done": False}

    response = flask_client.post("/todos/1/done")
    assert response.status_code == 200
    assert response.json == {"id": 1, "title": "Buy milk", "done": True}

    response = flask_client.delete("/todos/2")
    assert response.status_code == 204
    assert response.data == b""

    response = flask_client.get("/todos")
    assert response.status_code == 200
    assert response.json == [{"id": 1, "title": "Buy milk", "done": True}]


def test_flask_todo_errors(flask_client: FlaskClient, flask_app: Flask) -> None:
    """Unknown ids answer 404, a bad title 400, and no connection stays checked out."""
    for response in (flask_client.post("/todos/7/done"), flask_client.delete("/todos/7")):
        assert response.status_code == 404
        assert response.json == {"error": "There is no todo with id 7."}
    for body in ({}, {"title": "  "}, {"title": 3}):
        response = flask_client.post("/todos", json=body)
        assert response.status_code == 400
        assert response.json is not None
        assert "title" in response.json["error"]
    assert flask_client.get("/todos").json == []
    assert engine_of(flask_app).pool.checkedout() == 0  # type: ignore[attr-defined]


def test_flask_database_url_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an argument, create_app uses TODO_DATABASE_URL and creates the tables."""
    monkeypatch.setenv("TODO_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    app = create_flask_app()
    try:
        assert (tmp_path / "env.db").exists()
        assert app.test_client().get("/todos").json == []
    finally:
        engine_of(app).dispose()


@pytest.fixture
def flask_async_app(tmp_path: Path) -> cabc.Iterator[Flask]:
    """The Flask async-views example on an aiosqlite file; its engine is disposed afterwards."""
    app = create_flask_async_app(f"sqlite+aiosqlite:///{tmp_path / 'flask_async_todo.db'}")
    try:
        yield app
    finally:
        dispose_engine(app)


@pytest.fixture
def flask_async_client(flask_async_app: Flask) -> FlaskClient:
    """A test client of the Flask async-views example."""
    return flask_async_app.test_client()


def test_flask_async_todo_lifecycle(flask_async_client: FlaskClient) -> None:
    """Todos can be added, marked done, deleted and listed through Flask async views."""
    for title in ("Buy milk", "Write the README"):
        response = flask_async_client.post("/todos", json={"title": title})
        assert response.status_code == 201
    assert response.json == {"id": 2, "title": "Write the README", "done": False}

    response = flask_async_client.post("/todos/1/done")
    assert response.status_code == 200
    assert response.json == {"id": 1, "title": "Buy milk", "done": True}

    response = flask_async_client.delete("/todos/2")
    assert response.status_code == 204
    assert response.data == b""

    response = flask_async_client.get("/todos")
    assert response.status_code == 200
    assert response.json == [{"id": 1, "title": "Buy milk", "done": True}]


def test_flask_async_todo_errors(flask_async_client: FlaskClient, flask_async_app: Flask) -> None:
    """Unknown ids answer 404, a bad title 400, and no connection stays checked out."""
    for response in (
        flask_async_client.post("/todos/7/done"),
        flask_async_client.delete("/todos/7"),
    ):
        assert response.status_code == 404
        assert response.json == {"error": "There is no todo with id 7."}
    for body in ({}, {"title": "  "}, {"title": 3}):
        response = flask_async_client.post("/todos", json=body)
        assert response.status_code == 400
        assert response.json is not None
        assert "title" in response.json["error"]
    assert flask_async_client.get("/todos").json == []
    assert async_engine_of(flask_async_app).pool.checkedout() == 0  # type: ignore[attr-defined]


def test_flask_async_count_command(flask_async_client: FlaskClient, flask_async_app: Flask) -> None:
    """'flask count' awaits the app's session through run() and prints the number of todos."""
    runner = flask_async_app.test_cli_runner()
    result = runner.invoke(args=["count"])
    assert result.exit_code == 0, result.output
    assert result.output == "0\n"
    for title in ("Buy milk", "Write the README"):
        assert flask_async_client.post("/todos", json={"title": title}).status_code == 201
    result = runner.invoke(args=["count"])
    assert result.exit_code == 0, result.output
    assert result.output == "2\n"
    assert async_engine_of(flask_async_app).pool.checkedout() == 0  # type: ignore[attr-defined]


def test_flask_async_database_url_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an argument, create_app uses TODO_DATABASE_URL and creates the tables."""
    monkeypatch.setenv("TODO_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'env.db'}")
    app = create_flask_async_app()
    try:
        assert (tmp_path / "env.db").exists()
        assert app.test_client().get("/todos").json == []
    finally:
        dispose_engine(app)


@needs_quart
def test_demo_runs_all_three_apps_over_http(tmp_path: Path) -> None:
    """examples/demo.py serves the three apps, scripts them over HTTP and exits 0."""
    env = {
        key: value for key, value in child_environ("error").items() if key != "TODO_DATABASE_URL"
    }
    result = subprocess.run(
        [sys.executable, str(DEMO)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    final_list = "final list:\n  [x] 1: Buy milk\n  [ ] 3: Release 0.1.0\n"
    assert f"Quart {final_list}" in result.stdout
    assert f"Flask {final_list}" in result.stdout
    assert f"Flask async {final_list}" in result.stdout
    assert "All three apps gave the expected list" in result.stdout
    assert "  < 204 No Content" in result.stdout
    for trouble in ("Traceback", "Warning", "Exception ignored"):
        assert trouble not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == [], "the demo left files in the working directory"
