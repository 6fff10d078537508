"""Flask: which session code beside a request gets, outside streaming.

``copy_current_request_context`` run in a thread pushes a new app context there: the
thread has its own session, closed in that thread, and the view's session is untouched.
Flask's streaming is in ``tests/test_streaming_flask.py``, its CLI in ``tests/test_cli.py``.
"""

from __future__ import annotations

import threading
import typing as t

from flask import copy_current_request_context
from sqlalchemy import func, select, text

from async_scoped_session_ext import current_session
from async_scoped_session_ext._frameworks import current_app_context

from .support import contexts
from .support.contexts import TIMEOUT, FlaskSetup
from .support.models import Todo

flask_setup = contexts.flask_setup  # the fixture


# --- Flask: a copied request context in a thread -------------------------------------------


def test_copy_current_request_context_in_a_thread(flask_setup: FlaskSetup) -> None:
    """The thread pushes a new app context: its own session, closed in that thread."""
    app, scoped = flask_setup.app, flask_setup.scoped
    seen: dict[str, t.Any] = {}

    @app.post("/")
    def view() -> str:
        seen["view_ctx"] = current_app_context()
        seen["view"] = view_session = current_session()
        current_session.execute(text("select 1"))

        @copy_current_request_context
        def work() -> None:
            seen["thread"] = threading.get_ident()
            seen["thread_ctx"] = current_app_context()
            seen["copy"] = session = current_session()
            session.add(Todo(title="from the thread"))
            current_session.commit()
            current_session.execute(text("select 1"))
            seen["copy_in_transaction"] = session.in_transaction()

        thread = threading.Thread(target=work)
        thread.start()
        thread.join(TIMEOUT)
        seen["copy_closed_before_view_ended"] = not seen["copy"].in_transaction()
        seen["view_untouched"] = scoped() is view_session and view_session.in_transaction()
        return str(current_session.scalar(select(func.count()).select_from(Todo)))

    assert app.test_client().post("/").text == "1"
    assert seen["thread"] != threading.get_ident()
    assert seen["thread_ctx"] is not seen["view_ctx"]
    assert seen["copy"] is not seen["view"]
    assert seen["copy_in_transaction"] is True
    assert seen["copy_closed_before_view_ended"] is True
    assert seen["view_untouched"] is True
    [torn] = flask_setup.teardowns.of(seen["thread_ctx"])
    assert torn.thread == seen["thread"] and torn.exc is None
    assert (torn.registered, torn.checked_out) == (1, 1)  # only the view's session is left
    assert flask_setup.clean()
