"""The app-factory example (examples/factory_app) with its TestConfig: client and CLI."""

from __future__ import annotations

import collections.abc as cabc
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine

from examples.factory_app import create_app
from examples.factory_app.db import session
from examples.factory_app.models import Base

TEST_CONFIG = "examples.factory_app.config.TestConfig"


def engine_of(app: Flask) -> Engine:
    """The engine the app made from its config (made now if it was not yet)."""
    with app.app_context():
        return session.get_bind().engine


@pytest.fixture
def app() -> cabc.Iterator[Flask]:
    """The example on its TestConfig database, with tables made by its init-db command."""
    app = create_app(TEST_CONFIG)
    result = app.test_cli_runner().invoke(args=["init-db", "--drop"])
    assert result.exit_code == 0, result.output
    yield app
    engine = engine_of(app)
    Base.metadata.drop_all(engine)
    engine.dispose()
    if engine.url.get_backend_name() == "sqlite" and engine.url.database:
        Path(engine.url.database).unlink(missing_ok=True)


def test_test_config(app: Flask) -> None:
    """TestConfig: testing mode, and a database of its own (never the development file)."""
    assert app.testing
    url = app.config["SQLALCHEMY_ENGINES"]["default"]
    assert url != "sqlite:///factory_app.db"
    assert engine_of(app).url.render_as_string(hide_password=False) == url


def test_routes(app: Flask) -> None:
    """Todos are added and listed; a bad title answers 400; sessions are closed after."""
    client = app.test_client()
    assert client.get("/todos").json == []
    for title in ("Buy milk", " Write docs "):
        assert client.post("/todos", json={"title": title}).status_code == 201
    assert client.get("/todos").json == [
        {"id": 1, "title": "Buy milk", "done": False},
        {"id": 2, "title": "Write docs", "done": False},
    ]
    for body in ({}, {"title": "  "}, {"title": 3}):
        assert client.post("/todos", json=body).status_code == 400
    assert len(session.registry) == 0
    assert engine_of(app).pool.checkedout() == 0  # type: ignore[attr-defined]


def test_init_db_command(app: Flask) -> None:
    """init-db creates the tables, keeps existing rows, and --drop starts afresh."""
    client = app.test_client()
    cli = app.test_cli_runner()
    assert client.post("/todos", json={"title": "kept"}).status_code == 201
    result = cli.invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Initialised ")
    assert [todo["title"] for todo in client.get("/todos").json or []] == ["kept"]
    assert cli.invoke(args=["init-db", "--drop"]).exit_code == 0
    assert client.get("/todos").json == []
    assert len(session.registry) == 0


def test_shell_has_current_session(app: Flask) -> None:
    """'flask shell' offers current_session, bound to the app's engine."""
    namespace = app.make_shell_context()
    with app.app_context():
        assert namespace["current_session"].get_bind() is engine_of(app)


def test_mapping_config(tmp_path: Path) -> None:
    """A mapping overrides DevConfig: here a SQLite file in the test's directory."""
    url = f"sqlite:///{tmp_path / 'todo.db'}"
    app = create_app({"TESTING": True, "SQLALCHEMY_ENGINES": {"default": url}})
    assert app.test_cli_runner().invoke(args=["init-db"]).exit_code == 0
    try:
        assert app.test_client().post("/todos", json={"title": "one"}).status_code == 201
        assert (tmp_path / "todo.db").exists()
    finally:
        engine_of(app).dispose()


def test_dev_config_is_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default (development) app names a file it does not create until first use."""
    monkeypatch.chdir(tmp_path)
    app = create_app()
    assert app.config["SQLALCHEMY_ENGINES"] == {"default": "sqlite:///factory_app.db"}
    assert not app.testing
    assert list(tmp_path.iterdir()) == []
