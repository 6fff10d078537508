"""Flask-Migrate and Flask-Alembic instead of the ``db`` group, on ``get_engine()``: the
snippets of docs/migrations.md, run as written there (sync engines, SQLite)."""

from __future__ import annotations

import collections.abc as cabc
import logging
import types
from pathlib import Path

import pytest
from flask import Flask
from flask.cli import FlaskGroup
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect

from async_scoped_session_ext import flask_scoped_session

from .support.engines import disposing


def _models() -> MetaData:
    metadata = MetaData()
    Table("other_item", metadata, Column("id", Integer, primary_key=True))
    return metadata


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def loggers() -> cabc.Iterator[None]:
    """Restore the logging set-up the other tools change: Flask-Migrate's env.py calls
    ``fileConfig()``, which disables every existing logger (the library's included), and
    Flask-Alembic gives loggers a handler of its own (on sys.stderr)."""
    loggers = [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]
    saved = [(logger, logger.level, list(logger.handlers), logger.disabled) for logger in loggers]
    yield
    for logger, level, handlers, disabled in saved:
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.disabled = disabled


@pytest.mark.usefixtures("loggers")
def test_flask_migrate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flask-Migrate's ``db`` migrates the scoped session's engine; ours is renamed."""
    flask_migrate = pytest.importorskip("flask_migrate")
    monkeypatch.chdir(tmp_path)
    metadata, url = _models(), f"sqlite:///{tmp_path / 'app.db'}"
    session = flask_scoped_session(metadata=metadata)
    # docs/migrations.md, "Flask-Migrate":
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": url}
    app.config["SQLALCHEMY_CLI_GROUP"] = "sqla"  # 'flask db' is Flask-Migrate's
    session.init_app(app)
    # Flask-Migrate's env.py reads 'engine' and 'metadata' of the object it is given.
    db = types.SimpleNamespace(engine=session.get_engine(app), metadata=metadata)
    flask_migrate.Migrate(app, db)
    # end of the snippet
    with disposing(app):
        runner = app.test_cli_runner()
        for args in (["db", "init"], ["db", "migrate", "-m", "items"], ["db", "upgrade"]):
            result = runner.invoke(args=args)
            assert result.exit_code == 0, (result.output, result.exception)
        assert _tables(url) == {"alembic_version", "other_item"}
        assert "upgrade" in runner.invoke(args=["sqla", "--help"]).output


@pytest.mark.usefixtures("loggers")
def test_flask_alembic(tmp_path: Path) -> None:
    """Flask-Alembic, given ``get_engine(app)`` and the metadata, migrates the engine."""
    flask_alembic = pytest.importorskip("flask_alembic")
    metadata, url = _models(), f"sqlite:///{tmp_path / 'app.db'}"
    session = flask_scoped_session(metadata=metadata)
    # docs/migrations.md, "Flask-Alembic":
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": url}
    app.config["SQLALCHEMY_CLI_GROUP"] = "sqla"  # 'flask db' is Flask-Alembic's
    app.config["ALEMBIC"] = {"script_location": str(tmp_path / "migrations")}
    session.init_app(app)
    flask_alembic.Alembic(app, metadatas=metadata, engines=session.get_engine(app))
    # end of the snippet
    with disposing(app):
        # Flask-Alembic's group needs the app context the flask executable pushes.
        cli, runner = FlaskGroup(create_app=lambda: app), app.test_cli_runner()
        for args in (["db", "revision", "items"], ["db", "upgrade"]):
            result = runner.invoke(cli, args=args)
            assert result.exit_code == 0, (result.output, result.exception)
        assert _tables(url) == {"alembic_version", "other_item"}
