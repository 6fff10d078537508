"""Pins every private framework or SQLAlchemy internal the library uses (DESIGN.md lists them).

If one of these tests fails on a new release, the internal changed: the library's use of it
(named in each docstring) must change with it.
"""

from __future__ import annotations

import contextvars
import textwrap
import typing as t

import pytest
from flask import Flask
from sqlalchemy import create_engine, event, select
from sqlalchemy.ext.asyncio import async_scoped_session as sa_async_scoped_session
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, scoped_session

from async_scoped_session_ext import async_scoped_session
from async_scoped_session_ext._context import record_of
from async_scoped_session_ext._teardown import has_changes

from .support.environment import needs_quart
from .support.models import Base, Todo
from .support.scripts import run_script


def test_flask_cv_app_holds_the_current_app_context() -> None:
    """``flask.globals._cv_app`` is a ContextVar holding the pushed context (_frameworks)."""
    from flask import globals as flask_globals

    app = Flask(__name__)
    assert isinstance(flask_globals._cv_app, contextvars.ContextVar)
    assert flask_globals._cv_app.get(None) is None
    with app.app_context() as ctx:
        assert flask_globals._cv_app.get(None) is ctx
    with app.test_request_context():
        assert flask_globals._cv_app.get().app is app


@needs_quart
async def test_quart_cv_app_holds_the_current_app_context() -> None:
    """``quart.globals._cv_app`` is a ContextVar holding the pushed context (_frameworks)."""
    from quart import Quart
    from quart import globals as quart_globals

    app = Quart(__name__)
    assert isinstance(quart_globals._cv_app, contextvars.ContextVar)
    async with app.app_context() as ctx:
        assert quart_globals._cv_app.get(None) is ctx
    assert quart_globals._cv_app.get(None) is None


def test_session_is_clean_reports_unflushed_changes() -> None:
    """``Session._is_clean()`` is false exactly while changes are unflushed (_context)."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            assert session._is_clean() is True
            session.add(Todo(title="x"))
            assert session._is_clean() is False and has_changes(session)
            session.flush()
            assert session._is_clean() is True and not has_changes(session)
    finally:
        engine.dispose()


def test_has_changes_without_is_clean_uses_the_public_sets() -> None:
    """Without ``_is_clean`` (an older or newer SQLAlchemy), the public sets are used."""

    class Sets:
        def __init__(self, new: list[object]) -> None:
            self.new = new
            self.dirty: list[object] = []
            self.deleted: list[object] = []

    assert has_changes(Sets([object()])) is True
    assert has_changes(Sets([])) is False


@pytest.mark.parametrize("scoped_class", [scoped_session, sa_async_scoped_session])
def test_generated_proxies_go_through_proxied(scoped_class: type[t.Any]) -> None:
    """SQLAlchemy's generated proxy methods reach the session through ``_proxied`` (_sync, _async).

    The library overrides ``_proxied`` to check where the session is used.
    """

    class Refusing(scoped_class):  # type: ignore[misc]
        @property
        def _proxied(self) -> t.NoReturn:
            raise LookupError("reached _proxied")

    refusing = Refusing(lambda: None, scopefunc=lambda: 1)
    for call in (lambda: refusing.add(object()), refusing.expunge_all, lambda: refusing.new):
        with pytest.raises(LookupError, match="reached _proxied"):
            call()


def test_session_flushing_is_set_during_a_flush() -> None:
    """``Session._flushing`` is true while a flush runs (replicas: a flush goes to the primary)."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    seen: list[bool] = []
    try:
        with Session(engine) as session:
            event.listen(session, "before_flush", lambda s, *_: seen.append(s._flushing))
            assert session._flushing is False
            session.add(Todo(title="x"))
            session.flush()
        assert seen == [True]
    finally:
        engine.dispose()


def test_select_for_update_arg_marks_locking_reads() -> None:
    """``Select._for_update_arg`` is set by ``with_for_update()`` only (replicas)."""
    assert select(Todo)._for_update_arg is None
    assert select(Todo).with_for_update()._for_update_arg is not None


# --- the framework adapters (_frameworks) off the frameworks' own paths -----------------------


def test_without_flask_or_quart_imported_there_is_no_app_context() -> None:
    """In a process that never imported Flask or Quart (a worker or script that uses the
    models before any app exists), the adapters find no app context without importing a
    framework to look, and the scoped session says how to push one."""
    script = textwrap.dedent(
        """
        import sys
        from sqlalchemy import create_engine
        from sqlalchemy.orm import sessionmaker
        from async_scoped_session_ext import flask_scoped_session

        scoped = flask_scoped_session(sessionmaker(bind=create_engine("sqlite://")))
        try:
            scoped()
        except RuntimeError as error:
            print(str(error).splitlines()[0])
        print([name for name in ("flask", "quart") if name in sys.modules])
        """
    )
    stdout = run_script(script)
    assert stdout.splitlines() == ["Working outside of application context.", "[]"]


@needs_quart
async def test_quart_signals_sent_outside_a_context_are_ignored() -> None:
    """Quart sends ``got_request_exception`` in a context; if other code sends it with
    none pushed, the library's receiver does nothing: no context is marked failed."""
    from quart import Quart
    from quart.signals import got_request_exception

    app = Quart(__name__)
    async_scoped_session(async_sessionmaker(create_async_engine("sqlite+aiosqlite://")), app)
    error = LookupError("sent by hand")
    await got_request_exception.send_async(app, _sync_wrapper=app.ensure_async, exception=error)  # type: ignore[arg-type]
    async with app.app_context() as ctx:  # a context pushed afterwards is not marked
        assert record_of(ctx) is None


@needs_quart
async def test_quart_teardown_error_collection_is_detected() -> None:
    """``_frameworks._collects_teardown_errors()`` (the library defers a cancellation raised
    in its teardown where it is true) says whether this Quart's ``AppContext.pop()`` wraps
    what a teardown raises in a ``BaseExceptionGroup`` (Quart 0.23) or lets it through."""
    from quart import Quart

    from async_scoped_session_ext._frameworks import _collects_teardown_errors

    app = Quart(__name__)

    @app.teardown_appcontext
    async def fail(exc: BaseException | None) -> None:
        raise ValueError("from a teardown")

    with pytest.raises(BaseException) as raised:  # noqa: PT011 - which kind is the question
        async with app.app_context():
            pass
    assert isinstance(raised.value, BaseExceptionGroup) is _collects_teardown_errors()
    assert "from a teardown" in repr(raised.value)
