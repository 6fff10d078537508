"""The misuse catalogue (docs/errors.md): each misuse raises an error that says the fix."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, insert, select, text
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session

from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A file SQLite database URL (sync driver)."""
    return f"sqlite:///{tmp_path / 'misuse.db'}"


def test_no_app_context(sqlite_url: str) -> None:
    """Outside an app context: RuntimeError saying how to push one."""
    engine = create_engine(sqlite_url)
    scoped = flask_scoped_session(sessionmaker(bind=engine), Flask(__name__))
    for use in (scoped, lambda: current_session.execute(text("select 1"))):
        with pytest.raises(RuntimeError, match=r"with app\.app_context\(\)"):
            use()
    engine.dispose()


def test_app_never_initialised(sqlite_url: str) -> None:
    """An app without scoped sessions: AttributeError from current_session (as before)."""
    engine = create_engine(sqlite_url)
    scoped = flask_scoped_session(sessionmaker(bind=engine))
    app = Flask(__name__)
    with app.app_context():
        with pytest.raises(AttributeError, match=r"call 'init_app\(app\)'"):
            current_session()
        with pytest.raises(RuntimeError, match=r"Did you forget to call 'init_app\(app\)'"):
            scoped()
    engine.dispose()


def test_init_app_twice(sqlite_url: str) -> None:
    """The same scoped session initialised twice on one app: RuntimeError."""
    engine = create_engine(sqlite_url)
    app = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(bind=engine), app)
    with pytest.raises(RuntimeError, match="must be called once per app"):
        scoped.init_app(app)
    engine.dispose()


@needs_quart
async def test_sync_session_in_quart_async_view(sqlite_url: str) -> None:
    """A sync session in a Quart request, on the loop that serves requests: TypeError."""
    engine = create_engine(sqlite_url)
    app = Quart(__name__)
    scoped = flask_scoped_session(sessionmaker(bind=engine), app)
    errors: list[str] = []

    @app.get("/")
    async def view() -> str:
        try:
            scoped.execute(text("select 1"))
        except TypeError as error:
            errors.append(str(error))
        return "ok"

    await app.test_client().get("/")
    assert errors and "would block that loop" in errors[0]
    async with app.app_context():  # no request: a Quart CLI command runs like this
        assert scoped.execute(text("select 1")).scalar_one() == 1
    engine.dispose()


@needs_quart
async def test_sync_fresh_in_quart_async_view(sync_engine: Engine) -> None:
    """``fresh()`` of a sync session in a Quart request's async code: the same TypeError."""
    app = Quart(__name__)
    scoped = flask_scoped_session(sessionmaker(bind=sync_engine), app)
    errors: list[str] = []

    @app.get("/")
    async def view() -> str:
        try:
            with scoped.fresh() as session:
                session.execute(text("select 1"))
        except TypeError as error:
            errors.append(str(error))
        return "ok"

    response = await app.test_client().get("/")
    assert response.status_code == 200
    assert len(errors) == 1 and "would block that loop" in errors[0]


def test_sync_session_in_flask_async_view_on_the_shared_loop(
    sqlite_url: str, tmp_path: Path
) -> None:
    """In a Flask app on the shared loop, a sync session in an async view: TypeError."""
    engine = create_engine(sqlite_url)
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
    app = Flask(__name__)
    app.testing = True
    scoped = flask_scoped_session(sessionmaker(bind=engine), app)
    ascoped = async_scoped_session(async_sessionmaker(async_engine), app)

    @app.get("/")
    async def view() -> str:
        scoped.execute(text("select 1"))
        return "unreachable"

    with pytest.raises(TypeError, match="Use an async_scoped_session"):
        app.test_client().get("/")
    ascoped.run(async_engine.dispose())
    engine.dispose()


def test_sync_session_in_asgiref_async_view_still_works(sqlite_url: str) -> None:
    """A sync-only Flask app keeps Flask-SQLAlchemy-Session's behaviour in async views."""
    pytest.importorskip("asgiref")
    engine = create_engine(sqlite_url)
    app = Flask(__name__)
    flask_scoped_session(sessionmaker(bind=engine), app)

    @app.get("/")
    async def view() -> str:
        return str(current_session.execute(text("select 1")).scalar_one())

    assert app.test_client().get("/").text == "1"
    engine.dispose()


def test_async_session_in_sync_flask_view(tmp_path: Path) -> None:
    """An async session in a sync view, where nothing can await it: TypeError."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
    app = Flask(__name__)
    app.testing = True
    scoped = async_scoped_session(async_sessionmaker(engine), app)

    @app.get("/")
    def view() -> str:
        current_session.add(object())
        return "unreachable"

    with pytest.raises(TypeError, match="Make the view 'async def'"):
        app.test_client().get("/")
    scoped.run(engine.dispose())


@needs_quart
async def test_async_session_in_quart_sync_view(async_engine: AsyncEngine) -> None:
    """Quart runs sync views in a worker thread without a loop: TypeError there too."""
    app = Quart(__name__)
    async_scoped_session(async_sessionmaker(async_engine), app)
    errors: list[str] = []

    @app.get("/")
    def view() -> str:
        try:
            current_session()
        except TypeError as error:
            errors.append(str(error))
        return "ok"

    await app.test_client().get("/")
    assert errors and "no event loop is running" in errors[0]


def test_async_factory_given_to_sync_session(tmp_path: Path) -> None:
    """flask_scoped_session(async_sessionmaker(...)): TypeError naming the right class."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(TypeError, match="Use async_scoped_session"):
        flask_scoped_session(async_sessionmaker(engine))  # type: ignore[type-var]
    with pytest.raises(TypeError, match="bound to an async engine or driver"):
        flask_scoped_session(sessionmaker(bind=engine))  # type: ignore[call-overload]
    asyncio.run(engine.dispose())


def test_async_driver_url_given_to_sync_session(tmp_path: Path) -> None:
    """A sync engine on an async driver URL in flask_scoped_session: TypeError."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(TypeError, match="Use a sync driver URL"):
        flask_scoped_session(sessionmaker(bind=engine))
    engine.dispose()


def test_sync_factory_given_to_async_session(sqlite_url: str) -> None:
    """async_scoped_session(sessionmaker(...)) or a sync engine: TypeError with the fix."""
    engine = create_engine(sqlite_url)
    with pytest.raises(TypeError, match="it makes AsyncSessions"):
        async_scoped_session(sessionmaker(bind=engine))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="create_async_engine"):
        async_scoped_session(async_sessionmaker(bind=engine))  # type: ignore[call-overload]
    engine.dispose()


def test_sync_driver_url_given_to_async_engine(sqlite_url: str) -> None:
    """create_async_engine() on a sync driver URL is refused by SQLAlchemy itself."""
    with pytest.raises(InvalidRequestError, match="requires an async driver"):
        create_async_engine(sqlite_url)


def test_async_query_property(tmp_path: Path) -> None:
    """query_property() on the async session: TypeError saying what to use instead."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(TypeError, match=r"await session\.scalars"):
        async_scoped_session(async_sessionmaker(engine)).query_property()
    asyncio.run(engine.dispose())


async def test_sync_session_in_async_code_without_the_app_says_what_is_missing(
    sqlite_url: str,
) -> None:
    """In async code (a loop runs) outside any app context, or in the context of an app the
    session was never initialised on, the sync-in-async check stands aside: the error is
    the one naming what is missing (push a context, call init_app), not "would block"."""
    engine = create_engine(sqlite_url)
    scoped = flask_scoped_session(sessionmaker(bind=engine), Flask(__name__))
    try:
        with pytest.raises(RuntimeError, match=r"with app\.app_context\(\)"):
            scoped.execute(text("select 1"))
        with Flask("another").app_context():
            with pytest.raises(RuntimeError, match=r"Did you forget to call 'init_app\(app\)'"):
                scoped.execute(text("select 1"))
    finally:
        engine.dispose()


@needs_quart
async def test_session_method_that_uses_the_scoped_session_is_not_concurrent_use(
    async_engine: AsyncEngine,
) -> None:
    """A session method that itself goes through the scoped session (a commit that writes
    an audit row with ``current_session``) runs in the same task: it is not reported as
    concurrent use, and the session is free for another task once the outer call returns."""

    class AuditedSession(AsyncSession):
        async def commit(self) -> None:
            await current_session.execute(insert(Todo).values(title="audit"))  # re-entrant
            await super().commit()

    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(async_engine, class_=AuditedSession), app)

    async def titles() -> list[str]:
        return sorted((await scoped.scalars(select(Todo.title))).all())

    async with app.app_context():
        scoped.add(Todo(title="work"))
        await scoped.commit()
        assert await asyncio.create_task(titles()) == ["audit", "work"]
