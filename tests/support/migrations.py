"""Projects for the ``db`` commands: apps with one or two named engines, fresh databases.

Each engine has its own database (a SQLite file, or a PostgreSQL database made for the test
and dropped after it) and its own ``MetaData`` with one table, ``<name>_item``.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import typing as t
import uuid
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner, Result
from flask import Flask
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, inspect

from async_scoped_session_ext import async_scoped_session, flask_scoped_session

from .databases import require_postgres
from .engines import disposing, sync_url_of
from .extra_databases import database_url, postgres_databases

if t.TYPE_CHECKING:
    from flask.sansio.app import App

#: (framework, backend): sync apps on the sync drivers, Flask async and Quart on async ones.
CASES = [
    ("flask", "sqlite"),
    ("flask", "postgresql"),
    ("flask-async", "aiosqlite"),
    ("flask-async", "asyncpg"),
    ("quart", "aiosqlite"),
    ("quart", "asyncpg"),
    ("quart-sync", "sqlite"),  # a Quart app's sync scoped session
]
ENGINE_NAMES = {1: ["default"], 2: ["default", "users"]}


def models(name: str) -> MetaData:
    """The metadata of engine *name*: one table, ``<name>_item``."""
    metadata = MetaData()
    Table(
        f"{name}_item",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("title", String(50)),
    )
    return metadata


@contextlib.contextmanager
def engine_urls(backend: str, names: list[str], tmp_path: Path) -> cabc.Iterator[dict[str, str]]:
    """A URL of a database of its own for each engine name (made now, dropped afterwards)."""
    if backend in ("sqlite", "aiosqlite"):
        prefix = "sqlite+aiosqlite" if backend == "aiosqlite" else "sqlite"
        yield {name: f"{prefix}:///{tmp_path / name}.db" for name in names}
        return
    require_postgres()
    tag = uuid.uuid4().hex[:8]
    driver = "asyncpg" if backend == "asyncpg" else "psycopg"
    with postgres_databases(*(f"mig_{tag}_{name}" for name in names)) as databases:
        yield {name: database_url(databases[f"mig_{tag}_{name}"], driver) for name in names}


@dataclass
class Project:
    """An app with a scoped session per engine, and its databases."""

    app: App
    urls: dict[str, str]
    metadata: dict[str, MetaData]

    def invoke(self, *args: str, input: str | None = None) -> Result:
        """Run ``<app> db ARGS`` through the app's CLI runner (an app context per command)."""
        runner: CliRunner = self.app.test_cli_runner()  # type: ignore[attr-defined]
        return runner.invoke(self.app.cli, ["db", *args], input=input)

    def ok(self, *args: str) -> str:
        """Run ``db ARGS``; fail unless it succeeds; return its output."""
        result = self.invoke(*args)
        assert result.exit_code == 0, (result.output, result.exception)
        return result.output

    def tables(self, name: str) -> set[str]:
        """The tables in engine *name*'s database now."""
        engine = create_engine(sync_url_of(self.urls[name]))
        try:
            return set(inspect(engine).get_table_names())
        finally:
            engine.dispose()


def make_app(framework: str, urls: dict[str, str], *, metadata: bool = True) -> Project:
    """An app of *framework* with a scoped session per engine URL (given ``metadata=``)."""
    if framework.startswith("quart"):
        from quart import Quart

        app: App = Quart(__name__)
    else:
        app = Flask(__name__)
    is_async = framework in ("flask-async", "quart")
    key = "SQLALCHEMY_ASYNC_ENGINES" if is_async else "SQLALCHEMY_ENGINES"
    app.config[key] = dict(urls)
    metadatas = {name: models(name) for name in urls}
    kind = async_scoped_session if is_async else flask_scoped_session
    for name in urls:
        kind(app=app, name=name, metadata=metadatas[name] if metadata else None)
    return Project(app, dict(urls), metadatas)


@contextlib.contextmanager
def project(framework: str, backend: str, count: int, tmp_path: Path) -> cabc.Iterator[Project]:
    """A :func:`make_app` project on fresh databases, its engines disposed afterwards."""
    with engine_urls(backend, ENGINE_NAMES[count], tmp_path) as urls:
        made = make_app(framework, urls)
        with disposing(made.app):
            yield made
