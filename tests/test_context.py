"""The core registry (``_context``) on its edges: a session made with options outside any app
context, a session forgotten without being closed, and a context collected after the event
loop of its sessions was closed."""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import gc
import weakref
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.exc import InvalidRequestError, SAWarning
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import async_scoped_session, flask_scoped_session

from .support.environment import HAS_QUART, needs_quart

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

NO_CONTEXT = r"Working outside of application context(.|\n)*with app\.app_context\(\)"


def test_session_with_options_outside_a_context_says_how_to_push_one(tmp_path: Path) -> None:
    """``scoped(**options)``, SQLAlchemy's way to make the session with options, raises
    outside an app context the same error as ``scoped()``, saying how to push one. In a
    context it makes the context's session with those options, once."""
    engine = create_engine(f"sqlite:///{tmp_path / 'options.db'}")
    app = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(bind=engine), app)
    try:
        with pytest.raises(RuntimeError, match=NO_CONTEXT):
            scoped(autoflush=False)
        assert len(scoped.registry) == 0
        with app.app_context():
            session = scoped(autoflush=False)
            assert session.autoflush is False and scoped() is session
            with pytest.raises(InvalidRequestError, match="already present"):
                scoped(autoflush=True)
        assert len(scoped.registry) == 0
    finally:
        engine.dispose()


@needs_quart
async def test_async_session_with_options_outside_a_context_says_how_to_push_one(
    tmp_path: Path,
) -> None:
    """The same for ``async_scoped_session`` in async code: outside an app context the
    error says how to push one; in a Quart context the options are used."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'options.db'}")
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(engine), app)
    try:
        with pytest.raises(RuntimeError, match=NO_CONTEXT):
            scoped(expire_on_commit=False)
        async with app.app_context():
            session = scoped(expire_on_commit=False)
            assert session.sync_session.expire_on_commit is False and scoped() is session
        assert len(scoped.registry) == 0
    finally:
        await engine.dispose()


def test_clear_forgets_the_session_without_closing_it(tmp_path: Path) -> None:
    """``registry.clear()`` (SQLAlchemy's ``ScopedRegistry`` API) forgets the context's
    session without closing it: the next use makes a new one, the teardown closes only
    that one, and the forgotten session stays the caller's to close. Outside a context
    there is nothing to forget."""
    engine = create_engine(f"sqlite:///{tmp_path / 'clear.db'}")
    app = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(bind=engine), app)
    try:
        with app.app_context():
            forgotten = scoped()
            forgotten.execute(text("select 1"))
            scoped.registry.clear()
            assert not scoped.registry.has() and len(scoped.registry) == 0
            current = scoped()
            assert current is not forgotten
            current.execute(text("select 1"))
        assert not current.in_transaction()
        assert forgotten.in_transaction(), "the teardown closed the forgotten session"
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        forgotten.close()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        scoped.registry.clear()
    finally:
        engine.dispose()


@pytest.fixture
def collect_by_hand() -> cabc.Iterator[None]:
    """No automatic collection while a context is being forgotten: the test collects."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@needs_quart
@pytest.mark.usefixtures("collect_by_hand")
def test_context_collected_after_its_loop_closed_drops_the_close(tmp_path: Path) -> None:
    """A Quart context pushed and never popped under ``asyncio.run()``, collected after that
    loop was closed: the library warns of the missed teardown, and as its sessions cannot be
    closed on a closed loop, it drops their close (never leaving a coroutine unawaited) and
    leaves the connection to SQLAlchemy, which terminates it, or drops it where the dialect
    cannot (warning as it does for every connection left to the garbage collector). Nothing
    stays checked out or registered."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'closed.db'}")
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(engine), app)

    async def push_and_forget() -> None:
        await app.app_context().push()  # never popped
        await scoped.execute(text("select 1"))  # a connection is checked out

    asyncio.run(push_and_forget())
    try:
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        with (
            # "terminated"; "dropped" where the dialect cannot terminate (SQLAlchemy 2.0.10's
            # aiosqlite).
            pytest.warns(SAWarning, match="garbage collector .* will be (terminated|dropped)"),
            pytest.warns(ResourceWarning, match="was never torn down") as warned,
        ):
            gc.collect()  # the context: the library warns and drops the close
            gc.collect()  # the session: SQLAlchemy terminates its connection
        # Nothing else, such as a "coroutine ... was never awaited" RuntimeWarning.
        assert sorted(w.category.__name__ for w in warned) == ["ResourceWarning", "SAWarning"]
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert len(scoped.registry) == 0
    finally:
        asyncio.run(engine.dispose())


def test_context_pushed_again_where_it_was_torn_down_opens_a_new_session(tmp_path: Path) -> None:
    """An app context object pushed again after its teardown, in the thread (``contextvars``
    context) where it was torn down, gets a new session, closed at its next teardown (Flask
    3.1's ``stream_with_context`` does this). A copy of the context's variables taken before
    the teardown (a thread or task outliving the request) is refused, as tested in
    ``test_teardown.py``."""
    engine = create_engine(f"sqlite:///{tmp_path / 'again.db'}")
    app = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(engine), app)
    ctx = app.app_context()
    try:
        with ctx:
            first = scoped()
            first.execute(text("select 1"))
        with ctx:  # the same object, pushed again here
            second = scoped()
            assert second is not first
            assert second.execute(text("select 1")).scalar() == 1
            assert len(scoped.registry) == 1
        assert len(scoped.registry) == 0
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_an_entry_left_by_a_gone_context_is_never_handed_on() -> None:
    """Records are kept by ``id()``, which a new object may reuse: an entry whose context is
    gone is never taken for the new object's (the weak reference's callback drops it first;
    were it still there, it is replaced)."""
    from async_scoped_session_ext._context import (
        AppContextLike,
        _records,
        ensure_record,
        record_of,
    )

    class Context:
        app = Flask(__name__)

    gone = Context()
    dead: weakref.ref[AppContextLike] = weakref.ref(gone)
    stale = ensure_record(gone)
    del gone  # the callback drops its entry
    assert dead() is None and stale not in [entry[1] for entry in _records.values()]

    ctx = Context()
    _records[id(ctx)] = (dead, stale)  # as if the callback had not run
    try:
        assert record_of(ctx) is None
        record = ensure_record(ctx)
        assert record is not stale and record_of(ctx) is record
    finally:
        _records.pop(id(ctx), None)
