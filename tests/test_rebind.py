"""How a test's isolation rebinds the app's session factories (``_rebind``).

Every engine a scoped session's factory reaches gets one connection in the test's
transaction, whatever the factory keeps it under: a scoped session with no engine in the
app's config is left alone, an engine handed to a custom sync Session class of an async
sessionmaker is swapped for the test's connection too, and a SQLite engine that emits its
own ``BEGIN`` (SQLAlchemy's pysqlite recipe) is not begun twice.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Connection, Engine, String, create_engine, event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, Session, mapped_column, sessionmaker

from async_scoped_session_ext import async_scoped_session, flask_scoped_session
from async_scoped_session_ext.testing import aisolate, isolate

from .support.environment import HAS_QUART, needs_quart
from .support.models import Base, Todo

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

COUNT = select(func.count(Todo.id))


def test_scoped_session_without_engine_in_config_is_left_out(tmp_path: Path) -> None:
    """An app's named scoped session whose engine is not in the app's config has nothing to
    isolate: the isolation opens a connection for the configured one only, and the other one
    still explains, when used, which config key is missing."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": f"sqlite:///{tmp_path / 'main.db'}"}
    main = flask_scoped_session(app=app)
    archive = flask_scoped_session(app=app, name="archive")
    with app.app_context():
        engine = main().get_bind()
    assert isinstance(engine, Engine)
    Base.metadata.create_all(engine)
    try:
        with isolate(app) as db:
            assert [c.engine for c in db.connections] == [engine]
            with app.app_context():
                main.add(Todo(title="rolled back"))
                main.commit()
                assert main.scalar(COUNT) == 1
                with pytest.raises(RuntimeError, match=r"'SQLALCHEMY_ENGINES\['archive'\]' is not"):
                    archive.scalar(COUNT)
        with app.app_context():
            assert main.scalar(COUNT) == 0
    finally:
        engine.dispose()


class ArchiveBase(DeclarativeBase):
    pass


class Entry(ArchiveBase):
    __tablename__ = "asse_test_archive_entry"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


class ArchiveSession(Session):
    """A sync Session class that writes ``Entry`` rows to an archive engine of its own."""

    def __init__(self, *, archive: Engine | Connection, **kw: t.Any) -> None:
        super().__init__(**kw)
        self.archive = archive

    def get_bind(self, mapper: t.Any = None, **kw: t.Any) -> Engine | Connection:
        if isinstance(mapper, Mapper) and mapper.class_ is Entry:
            return self.archive
        return super().get_bind(mapper, **kw)


@needs_quart
async def test_custom_sync_session_class_engine_joins_the_test(tmp_path: Path) -> None:
    """Awaited, on Quart: an ``async_sessionmaker`` whose ``sync_session_class`` is given the
    sync core of a second async engine. Both engines get a connection; the custom class is
    handed the test's connection to the archive (the sync face of its ``AsyncConnection``),
    so what the app commits to either database is seen inside and rolled back after."""
    primary = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'primary.db'}")
    archive = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'archive.db'}")
    async with primary.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    async with archive.begin() as connection:
        await connection.run_sync(ArchiveBase.metadata.create_all)
    app = Quart(__name__)
    scoped = async_scoped_session(
        async_sessionmaker(primary, sync_session_class=ArchiveSession, archive=archive.sync_engine),
        app,
    )
    entries = select(func.count(Entry.id))
    try:
        async with aisolate(app) as db:
            connections = {
                c.engine.url.database: t.cast(AsyncConnection, c) for c in db.connections
            }
            assert set(connections) == {primary.url.database, archive.url.database}
            async with app.app_context():
                sync_session = t.cast(ArchiveSession, scoped().sync_session)
                to_archive = connections[archive.url.database].sync_connection
                assert sync_session.archive is to_archive
                scoped.add_all([Todo(title="t"), Entry(text="e")])
                await scoped.commit()
                assert (await scoped.scalar(COUNT), await scoped.scalar(entries)) == (1, 1)
        async with app.app_context():
            assert t.cast(ArchiveSession, scoped().sync_session).archive is archive.sync_engine
            assert (await scoped.scalar(COUNT), await scoped.scalar(entries)) == (0, 0)
    finally:
        await primary.dispose()
        await archive.dispose()


def begins_itself(engine: Engine) -> Engine:
    """SQLAlchemy's pysqlite recipe: the driver never begins, the ``begin`` event does."""

    @event.listens_for(engine, "connect")
    def no_driver_transactions(dbapi_connection: t.Any, record: t.Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def emit_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def test_sqlite_engine_that_emits_its_own_begin(tmp_path: Path) -> None:
    """A SQLite engine set up with SQLAlchemy's ``BEGIN`` recipe is already in a transaction
    when the test's connection begins: no second ``BEGIN`` (SQLite would refuse it), and the
    app's commits and savepoints still roll back at the end."""
    engine = begins_itself(create_engine(f"sqlite:///{tmp_path / 'recipe.db'}"))
    Base.metadata.create_all(engine)
    app = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(engine), app)
    try:
        with engine.connect() as connection:  # what a second BEGIN would do
            with pytest.raises(OperationalError, match="within a transaction"):
                with connection.begin():
                    connection.exec_driver_sql("BEGIN")
        with isolate(app):
            with app.app_context():
                scoped.add(Todo(title="committed"))
                scoped.commit()
                with scoped.begin_nested():
                    scoped.add(Todo(title="in a savepoint"))
                assert scoped.scalar(COUNT) == 2
        with Session(engine) as check:
            assert check.scalar(COUNT) == 0
    finally:
        engine.dispose()
