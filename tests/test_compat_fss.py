"""flask_scoped_session behaves as Flask-SQLAlchemy-Session 1.1 did, for a drop-in swap."""

from __future__ import annotations

import collections.abc as cabc
from unittest import mock

import pytest
from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, close_all_sessions, scoped_session, sessionmaker

from async_scoped_session_ext import current_session, flask_scoped_session

from .support.models import Todo


@pytest.fixture
def app() -> Flask:
    """A bare Flask app in testing mode."""
    app = Flask(__name__)
    app.testing = True
    return app


@pytest.fixture
def factory(sync_engine: Engine) -> cabc.Iterator[sessionmaker[Session]]:
    """A sessionmaker bound to a real database (pysqlite file or PostgreSQL).

    A session left open fails the test; it is then closed, so that its locks cannot make the
    engine fixture's drop_all wait forever.
    """
    yield sessionmaker(bind=sync_engine)
    left_checked_out = sync_engine.pool.checkedout()  # type: ignore[attr-defined]
    close_all_sessions()
    assert left_checked_out == 0, "a session was left holding a connection"


def test_constructor_calls_init_app_with_the_app(
    app: Flask, factory: sessionmaker[Session]
) -> None:
    """Passing an app to the constructor calls ``init_app(app)`` exactly once."""
    with mock.patch.object(flask_scoped_session, "init_app") as init_app:
        flask_scoped_session(factory, app)
    init_app.assert_called_once_with(app)


def test_constructor_without_app_does_not_call_init_app(
    factory: sessionmaker[Session],
) -> None:
    """Without an app, the constructor leaves ``init_app`` to the app factory."""
    with mock.patch.object(flask_scoped_session, "init_app") as init_app:
        flask_scoped_session(factory)
    init_app.assert_not_called()


def test_init_app_sets_app_scoped_session(app: Flask, factory: sessionmaker[Session]) -> None:
    """``init_app`` stores the scoped session as ``app.scoped_session``."""
    ses = flask_scoped_session(factory)
    assert not hasattr(app, "scoped_session")
    ses.init_app(app)
    assert app.scoped_session is ses  # type: ignore[attr-defined]


def test_is_a_scoped_session(factory: sessionmaker[Session]) -> None:
    """The object is a SQLAlchemy ``scoped_session``, as Flask-SQLAlchemy-Session's was."""
    assert isinstance(flask_scoped_session(factory), scoped_session)


def test_remove_called_once_per_app_context_teardown(
    app: Flask, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each app-context teardown calls ``remove()`` once, even if no session was created."""
    ses = flask_scoped_session(factory, app)
    remove = mock.Mock(side_effect=ses.remove)
    monkeypatch.setattr(ses, "remove", remove)

    with app.app_context():
        pass
    assert remove.call_count == 1

    with app.app_context():
        session = ses()
        session.execute(select(1))
        assert session.in_transaction()
        assert remove.call_count == 1
    assert remove.call_count == 2
    assert not session.in_transaction()
    remove.assert_called_with()


def test_remove_called_once_per_request(
    app: Flask, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests through the test client call ``remove()`` twice."""
    ses = flask_scoped_session(factory, app)
    remove = mock.Mock(side_effect=ses.remove)
    monkeypatch.setattr(ses, "remove", remove)

    @app.get("/")
    def index() -> str:
        current_session.execute(select(1))
        return "ok"

    client = app.test_client()
    assert client.get("/").status_code == 200
    assert remove.call_count == 1
    assert client.get("/").status_code == 200
    assert remove.call_count == 2


def test_current_session_on_uninitialised_app_raises_attribute_error(app: Flask) -> None:
    """``current_session()`` in a request of an app never initialised raises AttributeError."""
    with app.test_request_context():
        with pytest.raises(AttributeError, match="scoped_session"):
            current_session()
        with pytest.raises(AttributeError):
            current_session.query(Todo)


def test_current_session_is_the_scoped_session(app: Flask, factory: sessionmaker[Session]) -> None:
    """``_get_current_object()`` is the scoped session; calling it gives the request's Session."""
    ses = flask_scoped_session(factory, app)
    with app.test_request_context():
        assert current_session._get_current_object() is ses
        first = current_session()
        assert isinstance(first, Session)
        assert current_session() is first
        assert ses() is first
    with app.test_request_context():
        second = current_session()
        assert isinstance(second, Session)
        assert second is not first
        assert current_session() is second


def test_current_session_query_exists(app: Flask, factory: sessionmaker[Session]) -> None:
    """``current_session.query`` is the legacy Query API of the request's session."""
    flask_scoped_session(factory, app)
    with app.test_request_context():
        assert callable(current_session.query)
        query = current_session.query(Todo)
        assert query.session is current_session()
        assert query.count() == 0


def test_works_with_test_request_context(app: Flask, factory: sessionmaker[Session]) -> None:
    """Inside ``test_request_context()`` the session works and is closed when it ends."""
    flask_scoped_session(factory, app)
    with app.test_request_context():
        current_session.add(Todo(title="inside"))
        current_session.commit()
        session = current_session()
        assert [todo.title for todo in current_session.query(Todo)] == ["inside"]
        assert session.in_transaction()
    assert not session.in_transaction()
    assert len(session.identity_map) == 0


def test_works_with_test_client(app: Flask, factory: sessionmaker[Session]) -> None:
    """Through the test client each request gets its own session, closed at teardown."""
    ses = flask_scoped_session(factory, app)
    seen: list[Session] = []

    @app.post("/todos/<title>")
    def create(title: str) -> str:
        current_session.add(Todo(title=title))
        current_session.commit()
        seen.append(current_session())
        return str(current_session.query(Todo).count())

    client = app.test_client()
    assert client.post("/todos/a").get_data(as_text=True) == "1"
    assert client.post("/todos/b").get_data(as_text=True) == "2"
    assert len(seen) == 2
    assert seen[0] is not seen[1]
    assert not any(session.in_transaction() for session in seen)
    assert len(ses.registry) == 0


def test_configure_bind_outside_an_app_context(sync_engine: Engine) -> None:
    """The app-factory pattern: ``configure(bind=engine)`` at import time, then
    ``init_app(app)``; requests use that engine."""
    ses = flask_scoped_session(sessionmaker())  # module level: no engine yet
    ses.configure(bind=sync_engine)  # outside any app context
    app = Flask(__name__)
    app.testing = True
    ses.init_app(app)

    @app.post("/todos/<title>")
    def create(title: str) -> str:
        current_session.add(Todo(title=title))
        current_session.commit()
        assert current_session().get_bind() is sync_engine
        return str(current_session.query(Todo).count())

    client = app.test_client()
    assert client.post("/todos/a").text == "1"
    assert client.post("/todos/b").text == "2"
    assert sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_remove_outside_an_app_context_does_nothing(
    app: Flask, factory: sessionmaker[Session]
) -> None:
    """``remove()`` outside an app context (a unittest ``tearDown``) is a no-op."""
    ses = flask_scoped_session(factory, app)
    with app.app_context():
        ses.add(Todo(title="in the test"))
        ses.flush()
    ses.remove()  # tearDown, after the context has gone
    ses.remove()
    assert len(ses.registry) == 0
    with app.app_context():
        assert ses.query(Todo).count() == 0  # the context's teardown rolled back
