"""The shell context and CLI commands of apps whose engines come from ``app.config``.

``flask shell`` / ``quart shell`` get ``current_session``; Flask and Quart commands use
sync and async scoped sessions, closed when the command ends.
The factories and their scoped sessions are in ``tests/support/config_apps.py``.
"""

from __future__ import annotations

from flask.cli import shell_command
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from async_scoped_session_ext import current_session

from .support import config_apps
from .support.config_apps import (
    asession,
    create_app,
    create_async_app,
    create_quart_app,
    quart_asession,
    quart_session,
    session,
)
from .support.engines import checked_out, disposing, engines_of
from .support.environment import needs_quart

# Fixtures: imported into the module, pytest finds them.
sync_url = config_apps.sync_url
async_url = config_apps.async_url


# -- the shell ------------------------------------------------------------------------------


def test_flask_shell_context(sync_url: str) -> None:
    """'flask shell' gets current_session, usable at once in the shell's app context."""
    with disposing(create_app({"SQLALCHEMY_ENGINES": {"default": sync_url}})) as app:
        namespace = app.make_shell_context()
        assert namespace["current_session"] is current_session
        with app.app_context():
            proxy = namespace["current_session"]
            assert proxy._get_current_object() is session
            assert proxy.execute(text("select 1")).scalar_one() == 1
        # The real command: an interactive console reading this input.
        line = "print('answer:', current_session.execute(__import__('sqlalchemy').text('select 42')).scalar_one())"  # noqa: E501
        result = app.test_cli_runner().invoke(shell_command, input=line + "\n")
        assert result.exit_code == 0, result.output
        assert "answer: 42" in result.output
    assert len(session.registry) == 0


@needs_quart
async def test_quart_shell_context(async_url: str) -> None:
    """'quart shell' gets current_session too."""
    app = create_quart_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": async_url}})
    namespace = app.make_shell_context()
    assert namespace["current_session"] is current_session
    async with app.test_app():
        async with app.app_context():
            proxy = namespace["current_session"]
            assert proxy._get_current_object() is quart_asession
            assert (await proxy.execute(text("select 1"))).scalar_one() == 1


# -- CLI commands ----------------------------------------------------------------------------


def test_flask_sync_command(sync_url: str) -> None:
    """A Flask command uses current_session directly; it is closed when the command ends."""
    with disposing(create_app({"SQLALCHEMY_ENGINES": {"default": sync_url}})) as app:
        cli = app.test_cli_runner()
        for number in (1, 2):
            result = cli.invoke(args=["add", f"todo {number}"])
            assert result.exit_code == 0, result.output
            assert result.output == f"{number} todos\n"
        assert len(session.registry) == 0
        (engine,) = engines_of(app)
        assert checked_out(engine) == 0
        assert app.test_client().get("/todos").json == ["todo 1", "todo 2"]


def test_flask_async_command(async_url: str) -> None:
    """A Flask command awaits through asession.run() on the shared loop."""
    with disposing(create_async_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": async_url}})) as app:
        cli = app.test_cli_runner()
        for number in (1, 2):
            result = cli.invoke(args=["add", f"todo {number}"])
            assert result.exit_code == 0, result.output
            assert result.output == f"{number} todos\n"
        assert len(asession.registry) == 0
        (engine,) = engines_of(app)
        assert checked_out(engine) == 0
        assert app.test_client().get("/todos").json == ["todo 1", "todo 2"]


@needs_quart
def test_quart_sync_command(sync_url: str) -> None:
    """A Quart command (run inside Quart's own asyncio.run) uses a sync scoped session."""
    with disposing(create_quart_app({"SQLALCHEMY_ENGINES": {"default": sync_url}})) as app:
        cli = app.test_cli_runner()
        for number in (1, 2):
            result = cli.invoke(args=["add-sync", f"todo {number}"])
            assert result.exit_code == 0, result.output
            assert result.output == f"{number} todos\n"
        assert len(quart_session.registry) == 0
        (engine,) = engines_of(app)
        assert isinstance(engine, Engine)
        assert checked_out(engine) == 0


@needs_quart
def test_quart_async_command(async_url: str) -> None:
    """A Quart command awaits through run(); its sessions are closed when the coroutine ends."""
    with disposing(create_quart_app({"SQLALCHEMY_ASYNC_ENGINES": {"default": async_url}})) as app:
        cli = app.test_cli_runner()
        for number in (1, 2):
            result = cli.invoke(args=["add-async", f"todo {number}"])
            assert result.exit_code == 0, result.output
            assert result.output == f"{number} todos\n"
        assert len(quart_asession.registry) == 0
        (engine,) = engines_of(app)
        assert isinstance(engine, AsyncEngine)
        assert checked_out(engine) == 0
