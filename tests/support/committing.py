"""An app of each kind (sync Flask, Flask async, Quart) with the same views, for the tests
of the model signals and of commit on success (``test_signals.py``,
``test_commit_on_success.py``)."""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import typing as t
from pathlib import Path

import pytest
from flask import Flask, abort, redirect, stream_with_context
from sqlalchemy import Engine, ForeignKey, String, create_engine, event, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from async_scoped_session_ext import async_scoped_session, flask_scoped_session
from async_scoped_session_ext._runner import runner

from .databases import database_url
from .environment import HAS_QUART

_F = t.TypeVar("_F", bound=t.Callable[..., t.Any])

#: "framework-backend": sync Flask, Flask async (on the shared loop), Quart.
KINDS = [
    "flask-sqlite",
    "flask-postgresql",
    "flask_async-aiosqlite",
    "flask_async-asyncpg",
    pytest.param("quart-aiosqlite", marks=pytest.mark.skipif(not HAS_QUART, reason="no Quart")),
    pytest.param("quart-asyncpg", marks=pytest.mark.skipif(not HAS_QUART, reason="no Quart")),
]


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "asse_test_commit_note"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))


class Child(Base):
    """A row whose foreign key is checked only at COMMIT (PostgreSQL and SQLite alike)."""

    __tablename__ = "asse_test_commit_child"

    id: Mapped[int] = mapped_column(primary_key=True)
    note_id: Mapped[int] = mapped_column(ForeignKey(Note.id, deferrable=True, initially="DEFERRED"))


def _sqlite_foreign_keys(dbapi_connection: t.Any, record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Harness:
    """An app of one kind on one backend, its scoped session, and the views of the tests.

    Quart apps run on an event loop of the harness's own; Flask async apps on the shared one.
    """

    def __init__(
        self, kind: str, tmp_path: Path, *, configured: bool = False, **config: t.Any
    ) -> None:
        framework, backend = kind.split("-")
        self.framework = framework
        self.loop = asyncio.Runner() if framework == "quart" else None
        url = database_url(backend, tmp_path)
        app: t.Any
        if framework == "quart":
            from quart import Quart

            app = Quart(__name__)
        else:
            app = Flask(__name__)
        app.config.update(config.pop("app_config", {}))
        self.app = app
        scoped: t.Any
        if framework == "flask":
            factory = None if configured else sessionmaker(create_engine(url))
            app.config["SQLALCHEMY_ENGINES"] = {"default": url}
            scoped = flask_scoped_session(factory, app, **config)
        else:
            afactory = None if configured else async_sessionmaker(url_engine(url))
            app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": url}
            scoped = async_scoped_session(afactory, app, **config)
        self.scoped = scoped
        self.engine: Engine | AsyncEngine = scoped.get_engine(app)
        sync_engine = self.engine.sync_engine if isinstance(self.engine, AsyncEngine) else None
        if backend.endswith("sqlite"):
            event.listen(sync_engine or self.engine, "connect", _sqlite_foreign_keys)
        self._reset_tables()
        add_views(app, scoped, is_async=framework != "flask")

    def run(self, coro: cabc.Coroutine[t.Any, t.Any, t.Any]) -> t.Any:
        """Run *coro* on the loop the app's async sessions use."""
        return self.loop.run(coro) if self.loop is not None else runner.run(coro)

    def _reset_tables(self, *, create: bool = True) -> None:
        engine = self.engine
        if isinstance(engine, AsyncEngine):

            async def reset() -> None:
                async with engine.begin() as conn:
                    await conn.run_sync(Base.metadata.drop_all)
                    if create:
                        await conn.run_sync(Base.metadata.create_all)

            self.run(reset())
        else:
            Base.metadata.drop_all(engine)
            if create:
                Base.metadata.create_all(engine)

    def get(self, path: str) -> int:
        """Request *path*, read the whole body; return the status."""
        if self.loop is not None:

            async def get() -> int:
                response = await self.app.test_client().get(path)
                await response.get_data()
                return t.cast(int, response.status_code)

            return self.loop.run(get())
        response = self.app.test_client().get(path)
        response.get_data()
        response.close()
        return t.cast(int, response.status_code)

    def titles(self) -> list[str]:
        """The titles of the notes in the database, sorted."""
        query = select(Note.title).order_by(Note.title)
        engine = self.engine
        if isinstance(engine, AsyncEngine):

            async def titles() -> list[str]:
                async with engine.connect() as conn:
                    return list((await conn.scalars(query)).all())

            return t.cast(list[str], self.run(titles()))
        with engine.connect() as conn:
            return list(conn.scalars(query).all())

    def close(self) -> None:
        """Drop the tables, dispose the engine, close the loop."""
        try:
            self._reset_tables(create=False)
            engine = self.engine
            assert engine.pool.checkedout() == 0, "a connection was left checked out"  # type: ignore[attr-defined]
        finally:
            if isinstance(self.engine, AsyncEngine):
                self.run(self.engine.dispose())
            else:
                self.engine.dispose()
            if self.loop is not None:
                self.loop.close()


def url_engine(url: str) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(url)


@pytest.fixture
def make_harness(tmp_path: Path) -> cabc.Iterator[t.Callable[..., Harness]]:
    """Make harnesses (``make_harness(kind, **options)``), closed after the test."""
    made: list[Harness] = []

    def make(kind: str, **options: t.Any) -> Harness:
        directory = tmp_path / str(len(made))
        directory.mkdir()
        harness = Harness(kind, directory, **options)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


def add_views(app: t.Any, scoped: t.Any, *, is_async: bool) -> None:
    """The views: ``/add/<title>/<how>``, ``/update/<old>/<new>``, ``/delete/<title>``,
    ``/fail`` (a commit that fails, by commit on success), ``/fail/commit`` (the view's own
    commit fails) and ``/none`` (no session)."""

    def finish(how: str, title: str) -> t.Any:
        """The view's answer after it added a note titled *title*: as *how* says."""
        if how == "redirect":
            return redirect("/none", code=302)  # Werkzeug 3.2 defaults to 303
        if how == "abort":
            abort(404)
        if how == "bad":
            return "bad", 400
        if how == "raise":
            raise RuntimeError("the view failed")
        if how == "handled_ok":
            raise ValueError("handled with 200")
        if how == "handled_bad":
            raise KeyError("handled with 409")
        return "ok"

    app.errorhandler(ValueError)(lambda error: ("handled", 200))
    app.errorhandler(KeyError)(lambda error: ("handled", 409))
    route = t.cast("t.Callable[[str], t.Callable[[_F], _F]]", app.route)

    if not is_async:

        @route("/add/<title>/<how>")
        def add(title: str, how: str) -> t.Any:
            scoped.add(Note(title=title))
            scoped.flush()
            if how == "commit":
                scoped.commit()
            if how == "stream":

                def body() -> cabc.Iterator[str]:
                    yield "first "
                    scoped.add(Note(title=f"{title}-late"))
                    scoped.flush()
                    yield "last"

                return app.response_class(stream_with_context(body()))
            return finish(how, title)

        @route("/update/<old>/<new>")
        def update(old: str, new: str) -> str:
            scoped.scalars(select(Note).filter_by(title=old)).one().title = new
            scoped.commit()
            return "ok"

        @route("/delete/<title>")
        def delete(title: str) -> str:
            scoped.delete(scoped.scalars(select(Note).filter_by(title=title)).one())
            scoped.commit()
            return "ok"

        @route("/fail")
        def fail() -> str:
            scoped.add(Note(title="parent-missing"))
            scoped.add(Child(note_id=999_999))
            scoped.flush()  # passes: the foreign key is checked at COMMIT
            return "ok"

        @route("/fail/commit")
        def fail_commit() -> str:
            fail()
            scoped.commit()  # raises: a 500
            return "unreachable"

    else:

        @route("/add/<title>/<how>")
        async def add_async(title: str, how: str) -> t.Any:
            scoped.add(Note(title=title))
            await scoped.flush()
            if how == "commit":
                await scoped.commit()
            if how == "stream":
                return stream_async(app, scoped, title)
            return finish(how, title)

        @route("/update/<old>/<new>")
        async def update_async(old: str, new: str) -> str:
            (await scoped.scalars(select(Note).filter_by(title=old))).one().title = new
            await scoped.commit()
            return "ok"

        @route("/delete/<title>")
        async def delete_async(title: str) -> str:
            await scoped.delete((await scoped.scalars(select(Note).filter_by(title=title))).one())
            await scoped.commit()
            return "ok"

        @route("/fail")
        async def fail_async() -> str:
            scoped.add(Note(title="parent-missing"))
            scoped.add(Child(note_id=999_999))
            await scoped.flush()
            return "ok"

        @route("/fail/commit")
        async def fail_commit_async() -> str:
            await fail_async()
            await scoped.commit()  # raises: a 500
            return "unreachable"

    @route("/none")
    def nothing() -> str:
        return "ok"


def stream_async(app: t.Any, scoped: t.Any, title: str) -> t.Any:
    """A streamed response whose body writes a note while it is sent (Quart only)."""
    from quart import stream_with_context as quart_stream

    @quart_stream
    async def body() -> cabc.AsyncIterator[str]:
        yield "first "
        scoped.add(Note(title=f"{title}-late"))
        await scoped.flush()
        yield "last"

    return app.response_class(body())
