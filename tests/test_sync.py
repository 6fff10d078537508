"""flask_scoped_session on a sync Flask app, on pysqlite and PostgreSQL (psycopg)."""

from __future__ import annotations

import contextvars
import gc
import logging

import pytest
from flask import Flask
from sqlalchemy import Engine, String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from async_scoped_session_ext import current_session, flask_scoped_session

from .support.models import Todo


@pytest.fixture
def app() -> Flask:
    """A bare Flask app in testing mode."""
    app = Flask(__name__)
    app.testing = True
    return app


@pytest.fixture
def scoped(app: Flask, sync_engine: Engine) -> flask_scoped_session[Session]:
    """A flask_scoped_session initialised on the app."""
    return flask_scoped_session(sessionmaker(bind=sync_engine), app)


def count_todos(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Todo)) or 0


def test_one_session_per_context(app: Flask, scoped: flask_scoped_session[Session]) -> None:
    """Within a context the session is stable; each new context gets a new one."""
    with app.app_context():
        first = scoped()
        assert isinstance(first, Session)
        assert scoped() is first
        assert current_session() is first
    with app.app_context():
        second = scoped()
        assert second is not first


def test_teardown_rolls_back_and_returns_connection(
    app: Flask, scoped: flask_scoped_session[Session], sync_engine: Engine
) -> None:
    """Uncommitted work is rolled back at teardown and the connection goes back."""

    @app.post("/uncommitted")
    def uncommitted() -> str:
        current_session.add(Todo(title="lost"))
        current_session.flush()
        return "ok"

    @app.post("/committed")
    def committed() -> str:
        scoped.add(Todo(title="kept"))
        scoped.commit()
        return "ok"

    client = app.test_client()
    assert client.post("/uncommitted").status_code == 200
    assert sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert count_todos(sync_engine) == 0
    assert client.post("/committed").status_code == 200
    assert count_todos(sync_engine) == 1


def test_teardown_rolls_back_when_view_raises(
    app: Flask, scoped: flask_scoped_session[Session], sync_engine: Engine
) -> None:
    """A view that raises after flushing leaves nothing behind."""

    @app.post("/boom")
    def boom() -> str:
        current_session.add(Todo(title="half done"))
        current_session.flush()
        raise ValueError("boom")

    app.testing = False
    response = app.test_client().post("/boom")
    assert response.status_code == 500
    assert sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert count_todos(sync_engine) == 0


def test_nested_context_gets_its_own_session(
    app: Flask, scoped: flask_scoped_session[Session], sync_engine: Engine
) -> None:
    """A nested app_context() has its own session, closed at its exit; the outer survives."""
    with app.app_context():
        outer = scoped()
        outer.add(Todo(title="outer"))
        outer.flush()
        with app.app_context():
            inner = scoped()
            assert inner is not outer
            inner.execute(text("select 1"))
        assert inner.get_transaction() is None, "the inner session was not closed"
        assert scoped() is outer
        assert outer.scalar(select(func.count()).select_from(Todo)) == 1
        outer.commit()
    assert count_todos(sync_engine) == 1


def test_hand_pushed_context(app: Flask, scoped: flask_scoped_session[Session]) -> None:
    """A context pushed by hand (shell or script) gets a session closed at pop."""
    ctx = app.app_context()
    ctx.push()
    try:
        session = current_session()
        session.execute(text("select 1"))
        assert session.in_transaction()
    finally:
        ctx.pop()
    assert not session.in_transaction()


def test_query_property(app: Flask, scoped: flask_scoped_session[Session]) -> None:
    """``Model.query = session.query_property()`` queries through the context's session."""

    class QueryBase(DeclarativeBase):
        query = scoped.query_property()

    class QueryTodo(QueryBase):
        __tablename__ = Todo.__tablename__
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))

    with app.app_context():
        scoped.add(QueryTodo(title="a"))
        scoped.commit()
        assert [todo.title for todo in QueryTodo.query.all()] == ["a"]
        assert QueryTodo.query.session is scoped()


def test_uninitialised_app_is_refused(app: Flask, scoped: flask_scoped_session[Session]) -> None:
    """A scoped session used in an app it was never initialised on raises, not leaks."""
    other = Flask("other")
    with other.app_context():
        with pytest.raises(RuntimeError, match=r"not initialised on the current app"):
            scoped()


def test_remove_is_idempotent(app: Flask, scoped: flask_scoped_session[Session]) -> None:
    """remove() twice, or with no session, is harmless, and the next call makes a new one."""
    with app.app_context():
        first = scoped()
        scoped.remove()
        scoped.remove()
        assert scoped() is not first


def test_failing_close_is_logged_and_other_teardowns_run(
    app: Flask,
    sync_engine: Engine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A close() that raises is logged, the entry is gone, and later teardowns still run."""
    ran: list[str] = []

    @app.teardown_appcontext  # registered first, so Flask runs it after ours
    def user_teardown(exc: BaseException | None) -> None:
        ran.append("user teardown")

    scoped = flask_scoped_session(sessionmaker(bind=sync_engine), app)

    def broken_close() -> None:
        raise OSError("network down")

    with caplog.at_level(logging.ERROR, logger="async_scoped_session_ext"):
        with app.app_context():
            session = scoped()
            session.execute(text("select 1"))
            monkeypatch.setattr(session, "close", broken_close)
    assert ran == ["user teardown"]
    assert len(scoped.registry) == 0
    assert "Closing the session" in caplog.text
    assert "network down" in caplog.text
    monkeypatch.undo()
    session.close()


def test_teardown_never_masks_the_view_error(
    app: Flask, scoped: flask_scoped_session[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view's exception reaches the caller even when close() fails too."""

    def broken_close() -> None:
        raise OSError("close failed")

    @app.get("/")
    def view() -> str:
        monkeypatch.setattr(scoped(), "close", broken_close)
        raise LookupError("the real error")

    with pytest.raises(LookupError, match="the real error"):
        app.test_client().get("/")


def test_missed_teardown_closes_the_session(
    app: Flask, scoped: flask_scoped_session[Session]
) -> None:
    """A context never popped does not pin its session: once it is gone, the session closes.

    The garbage collector reclaims the context, and with it the session, which is closed
    (its connection back in the pool) with a ResourceWarning naming the missed teardown.
    """

    def push_and_forget() -> Session:
        app.app_context().push()  # never popped
        session = scoped()
        session.execute(select(1))  # holds a connection, in a transaction
        return session

    session = contextvars.copy_context().run(push_and_forget)
    assert len(scoped.registry) == 1 and session.in_transaction()
    with pytest.warns(ResourceWarning, match="never torn down"):
        gc.collect()
    assert len(scoped.registry) == 0
    assert not session.in_transaction()


def test_outside_app_context_raises(scoped: flask_scoped_session[Session]) -> None:
    """Using the session with no app context pushed says how to push one."""
    with pytest.raises(RuntimeError, match=r"with app.app_context\(\)"):
        scoped()
    with pytest.raises(RuntimeError, match="Working outside of application context"):
        current_session.query(Todo)
