"""``flask shell`` and ``quart shell``: the session proxies, the scoped sessions by name, the
models of a declarative base given as ``metadata=``, and ``run`` for coroutines."""

from __future__ import annotations

import collections.abc as cabc
from pathlib import Path

import pytest
from flask import Flask
from flask.cli import shell_command
from sqlalchemy import Engine, MetaData, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import (
    async_scoped_session,
    current_async_session,
    current_session,
    current_sync_session,
    flask_scoped_session,
)

from .support.databases import database_url, engine_on_shared_loop
from .support.engines import disposing
from .support.environment import HAS_QUART, needs_quart
from .support.models import Base, Todo

if HAS_QUART:
    from quart import Quart
    from quart.cli import shell_command as quart_shell_command


@pytest.fixture
def shared_loop_engine(async_backend: str, tmp_path: Path) -> cabc.Iterator[AsyncEngine]:
    """An async engine with fresh tables, its connections on the shared loop."""
    with engine_on_shared_loop(database_url(async_backend, tmp_path)) as engine:
        yield engine


def test_a_declarative_base_gives_its_metadata_and_models(sync_engine: Engine) -> None:
    """``metadata=Base`` is ``Base.metadata`` for tables and migrations, and ``Base``'s models
    for the shell; ``metadata=Base.metadata`` has tables only."""
    with_models = flask_scoped_session(sessionmaker(sync_engine), metadata=Base)
    assert with_models.metadata is Base.metadata and with_models.models is Base.registry
    tables_only = flask_scoped_session(sessionmaker(sync_engine), metadata=Base.metadata)
    assert tables_only.metadata is Base.metadata and tables_only.models is None
    with pytest.raises(TypeError, match="takes a MetaData .* or a declarative base class"):
        flask_scoped_session(sessionmaker(sync_engine), metadata="Base")  # type: ignore[arg-type]


def test_flask_shell_namespace(sync_engine: Engine, shared_loop_engine: AsyncEngine) -> None:
    """In the app's context the shell gets both typed proxies, the scoped sessions by name
    (the async one of a shared name as ``<name>_async``), the models, and ``run``."""
    app = Flask(__name__)
    sync = flask_scoped_session(sessionmaker(sync_engine), app, metadata=Base)
    asession = async_scoped_session(async_sessionmaker(shared_loop_engine), app)
    reports = flask_scoped_session(sessionmaker(sync_engine), app, name="reports")
    assert app.make_shell_context()["current_session"] is current_session  # no context
    with app.app_context():
        namespace = app.make_shell_context()
        assert namespace["current_session"] is current_session
        assert namespace["current_sync_session"] is current_sync_session
        assert namespace["current_async_session"] is current_async_session
        assert namespace["scoped_sessions"] == {
            "default": sync,
            "reports": reports,
            "default_async": asession,
        }
        assert namespace["Todo"] is Todo
        run = namespace["run"]
        assert callable(run)

        async def count() -> int:
            return int(await current_async_session.scalar(select(func.count()).select_from(Todo)))

        assert run(count()) == 0


def test_flask_shell_without_async_sessions_has_no_run(sync_engine: Engine) -> None:
    """A sync-only app's shell has ``current_sync_session`` but no ``run`` or async proxy."""
    app = Flask(__name__)
    flask_scoped_session(sessionmaker(sync_engine), app, metadata=MetaData())
    with app.app_context():
        namespace = app.make_shell_context()
    assert "current_sync_session" in namespace
    assert "run" not in namespace and "current_async_session" not in namespace


def test_the_real_flask_shell(sync_engine: Engine, shared_loop_engine: AsyncEngine) -> None:
    """``flask shell`` reads lines that use a model, the sync proxy and ``run(...)``."""
    app = Flask(__name__)
    flask_scoped_session(sessionmaker(sync_engine), app, metadata=Base)
    async_scoped_session(async_sessionmaker(shared_loop_engine), app)
    lines = [
        "current_sync_session.add(Todo(title='from the shell'))",
        "current_sync_session.commit()",
        "print('titles:', current_sync_session.scalars(select(Todo.title)).all())",
        "print('ran:', run(__import__('asyncio').sleep(0, 'done')))",
    ]
    with disposing(app):
        result = app.test_cli_runner().invoke(
            shell_command, input="from sqlalchemy import select\n" + "\n".join(lines) + "\n"
        )
    assert result.exit_code == 0, result.output
    assert "titles: ['from the shell']" in result.output
    assert "ran: done" in result.output
    assert "Error" not in result.output, result.output


@needs_quart
def test_the_real_quart_shell(async_backend: str, tmp_path: Path) -> None:
    """``quart shell`` offers the models and ``run``; ``run`` awaits a query through
    ``current_async_session`` on the shared loop, inside Quart's own running loop."""
    url = database_url(async_backend, tmp_path)
    app = Quart(__name__)
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": url}
    asession = async_scoped_session(app=app, metadata=Base)
    lines = [
        "from sqlalchemy import func, select",
        "async def count(): return await current_async_session.scalar(select(func.count()).select_from(Todo))",  # noqa: E501
        "",
        "print('count:', run(count()))",
        "print('same:', scoped_sessions['default'] is current_async_session._get_current_object())",  # noqa: E501
    ]
    runner = app.test_cli_runner()
    assert runner.invoke(args=["db", "create-all"]).exit_code == 0
    result = runner.invoke(quart_shell_command, input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    assert "count: 0" in result.output and "same: True" in result.output, result.output
    assert len(asession.registry) == 0
    assert runner.invoke(args=["db", "drop-all", "--yes"]).exit_code == 0
