"""The model signals: sent for commits of the library's sessions in apps that opt in, with
what was inserted, updated and deleted; sync Flask, Flask async and Quart, SQLite and
PostgreSQL."""

from __future__ import annotations

import collections.abc as cabc
import typing as t

import pytest
from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import EngineRegistry, flask_scoped_session
from async_scoped_session_ext.signals import before_models_committed, models_committed

from .support import committing
from .support.committing import KINDS, Harness, Note

make_harness = committing.make_harness

MakeHarness: t.TypeAlias = t.Callable[..., Harness]
TRACK = {"SQLALCHEMY_TRACK_MODIFICATIONS": True}


class Received:
    """What the two signals sent for one app: ``before`` with titles, ``after`` without."""

    def __init__(self, app: t.Any) -> None:
        self.app = app
        self.before: list[list[tuple[str, str]]] = []
        self.after: list[list[str]] = []
        self.instances: list[list[object]] = []

    def on_before(self, sender: t.Any, changes: list[tuple[t.Any, str]]) -> None:
        assert sender is self.app
        self.before.append(
            [(operation, getattr(instance, "title", "-")) for instance, operation in changes]
        )
        self.instances.append([instance for instance, _ in changes])

    def on_after(self, sender: t.Any, changes: list[tuple[t.Any, str]]) -> None:
        assert sender is self.app
        self.after.append([operation for _, operation in changes])
        # The same instances as just before the commit (expired now: not read here).
        assert [instance for instance, _ in changes] == self.instances[-1]


@pytest.fixture
def receive() -> cabc.Iterator[t.Callable[[t.Any], Received]]:
    """Connect receivers for an app's signals; disconnected after the test."""
    made: list[Received] = []

    def connect(app: t.Any) -> Received:
        received = Received(app)
        before_models_committed.connect(received.on_before, app)
        models_committed.connect(received.on_after, app)
        made.append(received)
        return received

    yield connect
    for received in made:
        before_models_committed.disconnect(received.on_before)
        models_committed.disconnect(received.on_after)


@pytest.mark.parametrize("configured", [False, True], ids=["given", "configured"])
@pytest.mark.parametrize("kind", KINDS)
def test_insert_update_delete(
    make_harness: MakeHarness, receive: t.Callable[[t.Any], Received], kind: str, configured: bool
) -> None:
    """Each commit sends both signals with the changed models and what was done to them."""
    harness = make_harness(kind, configured=configured, app_config=TRACK)
    received = receive(harness.app)
    assert harness.get("/add/a/commit") == 200
    assert harness.get("/update/a/b") == 200
    assert harness.get("/delete/b") == 200
    assert received.before == [[("insert", "a")], [("update", "b")], [("delete", "b")]]
    assert received.after == [["insert"], ["update"], ["delete"]]


@pytest.mark.parametrize("kind", [kind for kind in KINDS if "flask-" not in str(kind)])
def test_async_factory_reconfigured(
    make_harness: MakeHarness, receive: t.Callable[[t.Any], Received], kind: str
) -> None:
    """An async factory reconfigured (options, another sync session class) sends once."""
    harness = make_harness(kind, app_config=TRACK)
    received = receive(harness.app)
    harness.scoped.configure(expire_on_commit=True)
    assert harness.get("/add/a/commit") == 200
    harness.scoped.configure(sync_session_class=type("OwnSession", (Session,), {}))
    assert harness.get("/add/b/commit") == 200
    assert received.after == [["insert"], ["insert"]]


@pytest.mark.parametrize("kind", KINDS)
def test_off_by_default(
    make_harness: MakeHarness, receive: t.Callable[[t.Any], Received], kind: str
) -> None:
    """Without SQLALCHEMY_TRACK_MODIFICATIONS nothing is sent."""
    harness = make_harness(kind)
    received = receive(harness.app)
    assert harness.get("/add/a/commit") == 200
    assert harness.titles() == ["a"]
    assert received.before == []
    assert received.after == []


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_for_a_rollback_and_a_failed_commit(
    make_harness: MakeHarness, receive: t.Callable[[t.Any], Received], kind: str
) -> None:
    """Rolled back writes send nothing; a commit that fails sends only the first signal."""
    harness = make_harness(kind, commit_on_success=True, app_config=TRACK)
    received = receive(harness.app)
    assert harness.get("/add/lost/bad") == 400
    assert received.before == []
    assert received.after == []
    assert harness.get("/fail") == 500
    assert sorted(operation for operation, _ in received.before[0]) == ["insert", "insert"]
    assert received.after == []
    assert harness.get("/add/kept/ok") == 200  # committed by commit_on_success
    assert received.before[1:] == [[("insert", "kept")]]
    assert received.after == [["insert"]]


@pytest.fixture
def engine(sync_engine: Engine) -> cabc.Iterator[Engine]:
    """A sync engine (SQLite, PostgreSQL) with the notes table."""
    committing.Base.metadata.create_all(sync_engine)
    yield sync_engine
    committing.Base.metadata.drop_all(sync_engine)


def tracked_app(factory: t.Any) -> tuple[Flask, flask_scoped_session[Session]]:
    app = Flask(__name__)
    app.config.update(TRACK)
    return app, flask_scoped_session(factory, app)


def test_rolled_back_changes_and_savepoints(
    engine: Engine, receive: t.Callable[[t.Any], Received]
) -> None:
    """Changes undone by a rollback or a rolled back savepoint are not sent; an object
    inserted and changed is an insert, one inserted and deleted is left out."""
    app, scoped = tracked_app(sessionmaker(engine))
    received = receive(app)
    with app.app_context():
        scoped.add(Note(title="rolled back"))
        scoped.flush()
        scoped.rollback()
        kept, gone = Note(title="kept"), Note(title="gone")
        scoped.add_all([kept, gone])
        scoped.flush()
        kept.title = "kept and changed"
        scoped.flush()
        scoped.delete(gone)
        with scoped.begin_nested() as savepoint:
            scoped.add(Note(title="in savepoint"))
            scoped.flush()
            savepoint.rollback()
        with scoped.begin_nested():
            scoped.add(Note(title="released"))
        scoped.commit()
    assert received.before == [[("insert", "kept and changed"), ("insert", "released")]]
    assert received.after == [["insert", "insert"]]


def test_fresh_sessions_send(engine: Engine, receive: t.Callable[[t.Any], Received]) -> None:
    """A session made by fresh() sends the signals too."""
    app, scoped = tracked_app(sessionmaker(engine))
    received = receive(app)
    with app.app_context(), scoped.fresh() as session:
        session.add(Note(title="fresh"))
        session.commit()
    assert received.before == [[("insert", "fresh")]]


def test_other_apps_and_sessions_unaffected(
    engine: Engine, receive: t.Callable[[t.Any], Received]
) -> None:
    """An app that did not opt in sends nothing, even with the same factory, and neither
    do sessions the library did not make, nor commits outside an app context."""
    factory = sessionmaker(engine)
    tracked, scoped = tracked_app(factory)
    other = Flask("other")
    other_scoped = flask_scoped_session(factory, other)
    received, other_received = receive(tracked), receive(other)
    with other.app_context():
        other_scoped.add(Note(title="other app"))
        other_scoped.commit()
    with tracked.app_context(), Session(engine) as plain:
        plain.add(Note(title="plain session"))
        plain.commit()
    with factory() as outside:
        outside.add(Note(title="no app context"))
        outside.commit()
    with tracked.app_context():
        assert len(scoped.scalars(select(Note)).all()) == 3
    assert received.before == []
    assert other_received.before == []
    assert other_received.after == []


def test_factory_that_cannot_be_tracked(engine: Engine) -> None:
    """A factory that is not a sessionmaker cannot be tracked: init_app says so."""
    app = Flask(__name__)
    app.config.update(TRACK)
    with pytest.raises(TypeError, match="not a sessionmaker or async_sessionmaker"):
        flask_scoped_session(lambda: Session(engine), app)


def test_sent_under_isolate(engine: Engine, receive: t.Callable[[t.Any], Received]) -> None:
    """A test that isolates the app's database work still gets the signals."""
    from async_scoped_session_ext.testing import isolate

    app, scoped = tracked_app(sessionmaker(engine))
    received = receive(app)
    with isolate(app), app.app_context():
        scoped.add(Note(title="isolated"))
        scoped.commit()
    assert received.before == [[("insert", "isolated")]]
    assert received.after == [["insert"]]
    with engine.connect() as conn:
        assert conn.scalars(select(Note.title)).all() == []  # rolled back by isolate


def test_engine_registry_sessions_send(
    engine: Engine, receive: t.Callable[[t.Any], Received]
) -> None:
    """The sessions of an ``EngineRegistry`` initialised on an app that opted in send the
    signals in that app, and in no other app the registry serves."""
    app = Flask(__name__)
    app.config.update(TRACK)
    other = Flask("other")
    registry = EngineRegistry(lambda key: engine.url, app=app)
    registry.init_app(other)
    received, other_received = receive(app), receive(other)
    try:
        for each, title in ((app, "tracked"), (other, "other app")):
            with each.app_context():
                registry["one"].add(Note(title=title))
                registry["one"].commit()
    finally:
        registry.close()
    assert received.before == [[("insert", "tracked")]]
    assert received.after == [["insert"]]
    assert other_received.before == []
    assert other_received.after == []
