"""CLI commands: a flask command gets one session; a quart command's run() closes its own.

A flask command runs in one app context, so it has one session, closed when the command
ends; the shell context has ``current_session``. A quart command runs its coroutines with
``scoped.run()``, which closes the context's async session when each is done, and refuses
to run outside an app context.
"""

from __future__ import annotations

import collections.abc as cabc
from pathlib import Path

import click
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from async_scoped_session_ext import async_scoped_session, current_session

from .support import contexts
from .support.contexts import FlaskSetup, count_todos
from .support.databases import database_url, engine_on_shared_loop
from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

flask_setup = contexts.flask_setup  # the fixture


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
