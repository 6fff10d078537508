"""CLI commands and the shell, with given engines and with engines made from ``app.config``.

A flask command runs in one app context, so it has one session, closed when the command
ends; the shell context has ``current_session``. A quart command runs its coroutines with
``scoped.run()``, which closes the context's async session when each is done, and refuses
to run outside an app context. The config-made apps and their scoped sessions are in
``tests/support/config_apps.py``.
"""

from __future__ import annotations

import collections.abc as cabc
from pathlib import Path

import click
import pytest
from flask.cli import shell_command
from sqlalchemy import Engine, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from async_scoped_session_ext import async_scoped_session, current_session

from .support import config_apps, contexts
from .support.config_apps import (
    asession,
    create_app,
    create_async_app,
    create_quart_app,
    quart_asession,
    quart_session,
    session,
)
from .support.contexts import FlaskSetup, count_todos
from .support.databases import database_url, engine_on_shared_loop
from .support.engines import checked_out, disposing, engines_of
from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

# Fixtures: imported into the module, pytest finds them.
flask_setup = contexts.flask_setup
sync_url = config_apps.sync_url
async_url = config_apps.async_url


def test_flask_cli_command_gets_one_session(flask_setup: FlaskSetup) -> None:
    """A flask command runs in one app context: one session, closed when the command ends."""
    app, engine = flask_setup.app, flask_setup.engine
    sessions: list[Session] = []

    @app.cli.command("add")
    def add() -> None:
        sessions.append(current_session())
        current_session.add(Todo(title="from the command"))
        current_session.commit()
        sessions.append(current_session())
        click.echo(current_session.scalar(select(func.count()).select_from(Todo)))

    result = app.test_cli_runner().invoke(args=["add"])
    assert result.exit_code == 0, result.output
    assert result.output == "1\n"
    assert sessions[0] is sessions[1] and not sessions[0].in_transaction()
    [torn] = flask_setup.teardowns.calls
    assert torn.exc is None and (torn.registered, torn.checked_out) == (0, 0)
    assert flask_setup.clean()
    assert count_todos(engine) == 1
    with app.app_context():
        assert app.make_shell_context()["current_session"] is current_session


@pytest.fixture
def runner_engine(async_backend: str, tmp_path: Path) -> cabc.Iterator[AsyncEngine]:
    """An async engine whose connections live on the library's shared loop, where run() runs."""
    with engine_on_shared_loop(database_url(async_backend, tmp_path)) as engine:
        yield engine


@needs_quart
def test_quart_cli_command_closes_its_sessions_after_run(runner_engine: AsyncEngine) -> None:
    """In a quart command, run(coro) closes the context's async session when coro is done."""
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(runner_engine), app)
    sessions: list[AsyncSession] = []

    async def add(title: str) -> int:
        sessions.append(current_session())
        current_session.add(Todo(title=title))
        await current_session.commit()
        return await current_session.scalar(select(func.count()).select_from(Todo)) or 0

    # Unlike Flask's, Quart's app.cli.command() pushes an app context only when asked to.
    @app.cli.command("add", with_appcontext=True)
    def add_command() -> None:
        click.echo(scoped.run(add("one")))
        closed_between = not sessions[0].in_transaction() and len(scoped.registry) == 0
        click.echo(scoped.run(add("two")))
        click.echo(closed_between)

    @app.cli.command("bare")
    def bare_command() -> None:
        click.echo(scoped.run(add("never")))

    result = app.test_cli_runner().invoke(args=["add"])
    assert result.exit_code == 0, result.output
    assert result.output == "1\n2\nTrue\n"
    assert len(sessions) == 2 and sessions[0] is not sessions[1]
    assert not any(session.in_transaction() for session in sessions)

    result = app.test_cli_runner().invoke(args=["bare"])
    assert isinstance(result.exception, RuntimeError)
    assert "Working outside of application context" in str(result.exception)
    assert len(sessions) == 2
    assert len(scoped.registry) == 0
    assert runner_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# -- apps with engines from app.config ----------------------------------------------------


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
