"""Flask streaming: stream_with_context bodies, plain generator bodies, streamed ORM objects.

Flask 3.1 tears the view's context down before a ``stream_with_context`` body and pushes
it again for the body, which gets a new session (two teardowns); before 3.1 and from 3.2
the body shares the view's context and session (one teardown, after the body). Both with
the test client and on a threaded werkzeug server, where the client may hang up mid-body.
A plain generator body has no app context; ORM objects committed in the view are detached
in the body.
"""

from __future__ import annotations

import collections.abc as cabc
import logging
import threading
import time
import typing as t

import httpx
import pytest
from flask import Response
from flask import stream_with_context as flask_stream_with_context
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import DetachedInstanceError

from async_scoped_session_ext import current_session
from async_scoped_session_ext._frameworks import current_app_context

from .support import contexts
from .support.contexts import (
    FLASK_VERSION,
    TIMEOUT,
    FlaskSetup,
    count_todos,
    eventually_sync,
    make_flask_setup,
)
from .support.models import Todo
from .support.servers import serving_wsgi

flask_setup = contexts.flask_setup  # the fixture

flask_31_streaming = pytest.mark.skipif(
    FLASK_VERSION != (3, 1),
    reason="Flask 3.1's streaming: before 3.1 (and from 3.2) the view's context stays pushed"
    " until the body ends, so there is one teardown, after streaming",
)
flask_30_streaming = pytest.mark.skipif(  # Flask 3.2 went back to Flask 3.0's streaming
    FLASK_VERSION == (3, 1),
    reason="Flask's streaming before 3.1 and from 3.2: Flask 3.1 tears the view's context down"
    " before the body",
)


# --- Flask 3.1: stream_with_context ---------------------------------------------------------


@flask_31_streaming
def test_flask_stream_with_context(
    flask_setup: FlaskSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """The same context is torn down twice: before the body, and after it with its new session."""
    app, engine = flask_setup.app, flask_setup.engine
    seen: dict[str, t.Any] = {}

    @app.get("/")
    def view() -> Response:
        seen["view_ctx"] = current_app_context()
        seen["view"] = current_session()
        current_session.execute(text("select 1"))

        def body() -> cabc.Iterator[str]:
            seen["view_closed_before_body"] = not seen["view"].in_transaction()
            seen["teardowns_before_body"] = len(flask_setup.teardowns.calls)
            seen["body_ctx"] = current_app_context()
            seen["body"] = session = current_session()
            session.add(Todo(title="streamed"))
            current_session.commit()
            count = current_session.scalar(select(func.count()).select_from(Todo))
            seen["body_in_transaction"] = session.in_transaction()
            yield f"{count} "
            yield "done"

        return Response(flask_stream_with_context(body()))

    with caplog.at_level(logging.WARNING, logger="async_scoped_session_ext"):
        response = app.test_client().get("/")
        # The test client has started the body: while it is suspended, its contexts stay
        # pushed in the iterating thread, until get_data() runs it to its end.
        assert current_app_context() is seen["view_ctx"]
        assert response.get_data(as_text=True) == "1 done"
        assert current_app_context() is None

    assert caplog.records == []
    assert seen["view_closed_before_body"] is True
    assert seen["teardowns_before_body"] == 1
    assert seen["body_ctx"] is seen["view_ctx"]  # Flask 3.1 re-pushes the same context
    assert seen["body"] is not seen["view"]
    assert seen["body_in_transaction"] is True
    assert not seen["body"].in_transaction()
    torn = flask_setup.teardowns.of(seen["view_ctx"])
    assert [call.exc for call in torn] == [None, None]
    assert [(call.registered, call.checked_out) for call in torn] == [(0, 0), (0, 0)]
    assert flask_setup.teardowns.calls == torn
    assert flask_setup.clean()
    assert count_todos(engine) == 1


@flask_31_streaming
def test_flask_view_changes_are_discarded_before_the_body(
    flask_setup: FlaskSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """Uncommitted changes of the view are rolled back, with a warning, before the body runs."""
    app, engine = flask_setup.app, flask_setup.engine

    @app.get("/")
    def view() -> Response:
        current_session.add(Todo(title="left for the body to commit"))

        def body() -> cabc.Iterator[str]:
            current_session.commit()  # the body's own, new session: nothing to commit
            yield str(current_session.scalar(select(func.count()).select_from(Todo)))

        return Response(flask_stream_with_context(body()))

    with caplog.at_level(logging.WARNING, logger="async_scoped_session_ext"):
        assert app.test_client().get("/").get_data(as_text=True) == "0"
    assert "never committed (1 new, 0 changed, 0 deleted objects)" in caplog.text
    assert flask_setup.clean()
    assert count_todos(engine) == 0


@flask_31_streaming
def test_flask_stream_session_captured_in_the_view_is_not_the_body_session(
    flask_setup: FlaskSetup,
) -> None:
    """A session object kept from the view is closed, and reopens a connection nothing closes."""
    app, engine = flask_setup.app, flask_setup.engine
    captured: list[Session] = []

    @app.get("/")
    def view() -> Response:
        session: Session = current_session()
        captured.append(session)

        def body() -> cabc.Iterator[str]:
            yield str(session.scalar(text("select 1")))  # the view's closed session, reused

        return Response(flask_stream_with_context(body()))

    try:
        assert app.test_client().get("/").get_data(as_text=True) == "1"
        assert len(flask_setup.scoped.registry) == 0
        assert captured[0].in_transaction()  # a new transaction no teardown will end
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    finally:
        captured[0].close()
    assert flask_setup.clean()


@flask_31_streaming
@pytest.mark.parametrize("ending", ["complete", "hang_up"])
def test_flask_stream_with_context_on_threaded_werkzeug(
    flask_setup: FlaskSetup, ending: str
) -> None:
    """On a real server the body's session is closed in the serving thread, also on hang-up."""
    app = flask_setup.app
    seen: dict[str, t.Any] = {}

    @app.get("/")
    def view() -> Response:
        seen["view_ctx"] = current_app_context()
        seen["view"] = current_session()
        current_session.execute(text("select 1"))
        chunks = 3 if ending == "complete" else 10_000

        def body() -> cabc.Iterator[str]:
            seen["body_thread"] = threading.get_ident()
            seen["body"] = current_session()
            current_session.execute(text("select 1"))
            for _ in range(chunks):
                yield "x" * 65536
                if ending == "hang_up":
                    time.sleep(0.005)

        return Response(flask_stream_with_context(body()))

    with (
        serving_wsgi(app) as base_url,
        httpx.Client(base_url=base_url, timeout=TIMEOUT, trust_env=False) as client,
    ):
        with client.stream("GET", "/") as response:
            assert response.status_code == 200
            if ending == "complete":
                assert len(response.read()) == 3 * 65536
            else:
                next(response.iter_bytes())  # then close the connection mid-body
        eventually_sync(lambda: len(flask_setup.teardowns.calls) == 2, "the second teardown ran")

    torn = flask_setup.teardowns.of(seen["view_ctx"])
    assert len(torn) == 2
    assert {call.thread for call in torn} == {seen["body_thread"]}
    expected = None if ending == "complete" else GeneratorExit
    assert torn[0].exc is None
    assert (type(torn[1].exc) if torn[1].exc is not None else None) is expected
    assert [(call.registered, call.checked_out) for call in torn] == [(0, 0), (0, 0)]
    assert seen["body"] is not seen["view"]
    assert not seen["body"].in_transaction()
    assert flask_setup.clean()


# --- Flask before 3.1 and from 3.2: stream_with_context -------------------------------------


@flask_30_streaming
def test_flask_30_stream_with_context_keeps_the_view_session(
    flask_setup: FlaskSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside Flask 3.1 the body shares the view's context and session; one teardown, after it."""
    app, engine = flask_setup.app, flask_setup.engine
    seen: dict[str, t.Any] = {}

    @app.get("/")
    def view() -> Response:
        seen["view_ctx"] = current_app_context()
        seen["view"] = current_session()
        current_session.add(Todo(title="left for the body to commit"))

        def body() -> cabc.Iterator[str]:
            seen["teardowns_before_body"] = len(flask_setup.teardowns.calls)
            seen["body_ctx"] = current_app_context()
            seen["body"] = current_session()
            current_session.commit()
            yield str(current_session.scalar(select(func.count()).select_from(Todo)))

        return Response(flask_stream_with_context(body()))

    with caplog.at_level(logging.WARNING, logger="async_scoped_session_ext"):
        assert app.test_client().get("/").get_data(as_text=True) == "1"

    assert caplog.records == []
    assert seen["teardowns_before_body"] == 0
    assert seen["body_ctx"] is seen["view_ctx"]
    assert seen["body"] is seen["view"]
    assert not seen["body"].in_transaction()
    [torn] = flask_setup.teardowns.calls
    assert torn.ctx is seen["view_ctx"] and torn.exc is None
    assert (torn.registered, torn.checked_out) == (0, 0)
    assert flask_setup.clean()
    assert count_todos(engine) == 1


@flask_30_streaming
@pytest.mark.parametrize("ending", ["complete", "hang_up"])
def test_flask_30_stream_with_context_on_threaded_werkzeug(
    flask_setup: FlaskSetup, ending: str
) -> None:
    """Outside Flask 3.1, on a real server: one teardown in the serving thread, also on hang-up."""
    app = flask_setup.app
    seen: dict[str, t.Any] = {}

    @app.get("/")
    def view() -> Response:
        seen["view_ctx"] = current_app_context()
        current_session.execute(text("select 1"))
        chunks = 3 if ending == "complete" else 10_000

        def body() -> cabc.Iterator[str]:
            seen["body_thread"] = threading.get_ident()
            seen["body"] = current_session()
            current_session.execute(text("select 1"))
            for _ in range(chunks):
                yield "x" * 65536
                if ending == "hang_up":
                    time.sleep(0.005)

        return Response(flask_stream_with_context(body()))

    with (
        serving_wsgi(app) as base_url,
        httpx.Client(base_url=base_url, timeout=TIMEOUT, trust_env=False) as client,
    ):
        with client.stream("GET", "/") as response:
            assert response.status_code == 200
            if ending == "complete":
                assert len(response.read()) == 3 * 65536
            else:
                next(response.iter_bytes())  # then close the connection mid-body
        eventually_sync(lambda: len(flask_setup.teardowns.calls) == 1, "the teardown ran")

    [torn] = flask_setup.teardowns.calls
    assert torn.ctx is seen["view_ctx"] and torn.thread == seen["body_thread"]
    assert (torn.registered, torn.checked_out) == (0, 0)
    assert not seen["body"].in_transaction()
    assert flask_setup.clean()


# --- Flask: plain generator bodies ---------------------------------------------------------


def test_flask_plain_generator_body_has_no_app_context(flask_setup: FlaskSetup) -> None:
    """Without stream_with_context the body runs after the pop: current_session raises."""
    app = flask_setup.app

    @app.get("/")
    def view() -> Response:
        current_session.execute(text("select 1"))

        def body() -> cabc.Iterator[str]:
            yield "first "
            yield str(current_session.scalar(text("select 1")))

        return Response(body())

    with pytest.raises(RuntimeError, match="Working outside of application context"):
        app.test_client().get("/").get_data()
    assert len(flask_setup.teardowns.calls) == 1  # only the view's context existed
    assert flask_setup.clean()


@pytest.mark.parametrize("expire_on_commit", [True, False])
def test_flask_streamed_orm_objects(sync_engine: Engine, expire_on_commit: bool) -> None:
    """Objects committed in the view are detached in the body: expired ones cannot load."""
    setup = make_flask_setup(sync_engine, expire_on_commit=expire_on_commit)

    @setup.app.get("/")
    def view() -> Response:
        todo = Todo(title="streamed")
        current_session.add(todo)
        current_session.commit()

        def body() -> cabc.Iterator[str]:
            yield "title: "
            yield todo.title

        return Response(body())

    client = setup.app.test_client()
    if expire_on_commit:
        with pytest.raises(DetachedInstanceError):
            client.get("/").get_data()
    else:
        assert client.get("/").get_data(as_text=True) == "title: streamed"
    assert setup.clean()
