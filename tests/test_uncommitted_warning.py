"""The "never committed" warning names the scoped session and what the context served."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session

from .support.databases import database_url, engine_on_shared_loop
from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo

if HAS_QUART:
    from quart import Quart, websocket
    from quart.signals import appcontext_popped

LOGGER = "async_scoped_session_ext"
CHANGES = "never committed (1 new, 0 changed, 0 deleted objects)"


def flask_app(engine: Engine, name: str = "default") -> tuple[Flask, flask_scoped_session]:
    """A sync Flask app whose view, command and helper each leave one object uncommitted."""
    app = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(bind=engine), app, name=name)

    @app.post("/todos")
    def add_todo() -> str:
        scoped.add(Todo(title="never committed"))
        return "ok"

    @app.cli.command("seed")
    def seed() -> None:
        scoped.add(Todo(title="never committed"))

    return app, scoped


def warning_of(caplog: pytest.LogCaptureFixture) -> str:
    (record,) = [r for r in caplog.records if CHANGES in r.getMessage()]
    return record.getMessage()


def test_flask_request_names_the_endpoint(
    sync_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A request's warning names its endpoint and the sync scoped session's name."""
    app, _ = flask_app(sync_engine)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert app.test_client().post("/todos").status_code == 200
    message = warning_of(caplog)
    assert "the sync scoped session 'default', in the request to endpoint 'add_todo'" in message
    assert "<" not in message  # no object repr


def test_unknown_url_names_the_path(sync_engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """A request that matched no endpoint (its 404 handler wrote) is named by its path."""
    app, scoped = flask_app(sync_engine)

    @app.errorhandler(404)
    def not_found(error: Exception) -> tuple[str, int]:
        scoped.add(Todo(title="never committed"))
        return "missing", 404

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert app.test_client().get("/nowhere").status_code == 404
    assert "in the request to '/nowhere' (no endpoint matched)" in warning_of(caplog)


def test_cli_command_is_named(sync_engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """A CLI command's warning names the command, and the session's own name."""
    app, _ = flask_app(sync_engine, name="analytics")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = app.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code == 0, result.output
    message = warning_of(caplog)
    assert "the sync scoped session 'analytics', in the CLI command '" in message
    assert " seed'" in message


def test_plain_app_context_says_so(sync_engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """Outside requests and commands, the warning says it was a plain app context."""
    app, scoped = flask_app(sync_engine)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with app.app_context():
            scoped.add(Todo(title="never committed"))
    assert "in a plain app context (no request, no CLI command)" in warning_of(caplog)


def test_plain_app_context_inside_a_click_command(
    sync_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A context a plain click command pushes itself is named after that command."""
    app, scoped = flask_app(sync_engine)

    @click.command("import-data")
    def import_data() -> None:
        with app.app_context():
            scoped.add(Todo(title="never committed"))

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = CliRunner().invoke(import_data)
    assert result.exit_code == 0, result.output
    assert "in the CLI command 'import-data'" in warning_of(caplog)


def test_flask_async_view_names_the_endpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Flask async view's warning names its endpoint and the async scoped session."""
    with engine_on_shared_loop(database_url("aiosqlite", tmp_path)) as engine:
        app = Flask(__name__)
        async_scoped_session(async_sessionmaker(engine), app)

        @app.post("/todos")
        async def add_async() -> str:
            current_session.add(Todo(title="never committed"))
            await current_session.flush()
            current_session.add(Todo(title="never flushed"))
            return "ok"

        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert app.test_client().post("/todos").status_code == 200
    message = warning_of(caplog)
    assert "the async scoped session 'default', in the request to endpoint 'add_async'" in message


@needs_quart
async def test_quart_request_and_websocket_name_the_endpoint(
    async_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Quart: a request's and a websocket's warning each name their endpoint."""
    app = Quart(__name__)
    async_scoped_session(async_sessionmaker(async_engine), app)

    @app.post("/todos")
    async def add_quart() -> str:
        current_session.add(Todo(title="never committed"))
        return "ok"

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        await current_session.execute(text("select 1"))
        current_session.add(Todo(title="never committed"))
        await websocket.send("done")

    popped = asyncio.Event()

    async def after_teardown(sender: Quart, **kwargs: object) -> None:
        popped.set()  # appcontext_popped comes after the library's teardown

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with app.test_app() as test_app:
            client = test_app.test_client()
            assert (await client.post("/todos")).status_code == 200
            message = warning_of(caplog)
            assert "scoped session 'default', in the request to endpoint 'add_quart'" in message
            caplog.clear()
            appcontext_popped.connect(after_teardown, app, weak=False)
            async with client.websocket("/ws") as socket:
                assert await socket.receive() == "done"
                await asyncio.wait_for(popped.wait(), 10)  # the handler returned
    assert "in the websocket to endpoint 'ws'" in warning_of(caplog)
