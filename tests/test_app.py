"""Per-app state (``_app``): which session factory a scoped session uses, and where it has none.

A scoped session created without a factory has no engine of its own: each app it is
initialised on makes one from its config. Outside an app context, or in an app it was never
initialised on, there is no such app, and the error says so and how to fix it; a scoped
session given its own factory needs neither. While a test isolates one app, the other apps
a scoped session is initialised on keep the factory it was given.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import async_scoped_session, flask_scoped_session
from async_scoped_session_ext.testing import isolate

from .support.models import Base, Todo

COUNT = select(func.count(Todo.id))

NO_CONTEXT = "Working outside of application context"
NOT_INITIALISED = "is not initialised on the current app"


def configured_app(tmp_path: Path) -> tuple[Flask, flask_scoped_session[Session]]:
    """A Flask app whose sync scoped session makes its engine from the app's config."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": f"sqlite:///{tmp_path / 'config.db'}"}
    return app, flask_scoped_session(app=app)


def database_of(session: Session) -> str | None:
    """The database file *session*'s engine is on (without connecting)."""
    bind = session.get_bind()
    assert isinstance(bind, Engine)
    return bind.url.database


def test_config_session_outside_an_app_context_says_how_to_push_one(tmp_path: Path) -> None:
    """``fresh()`` (and ``session_factory``) of a scoped session configured from app config,
    outside any app context: no app, so no engine; the error says to push an app context, and
    no fresh session is counted as open. With its own factory the same call works there."""
    app, scoped = configured_app(tmp_path)
    with pytest.raises(RuntimeError, match=NO_CONTEXT) as raised:
        with scoped.fresh():
            pass
    assert "with app.app_context()" in str(raised.value)
    with pytest.raises(RuntimeError, match=NO_CONTEXT):
        scoped.session_factory  # noqa: B018 - the property raises
    assert scoped.fresh_open == 0
    with app.app_context():  # inside one, the engine comes from the app's config
        with scoped.fresh() as session:
            assert database_of(session) == str(tmp_path / "config.db")
    assert scoped.fresh_open == 0

    engine = create_engine(f"sqlite:///{tmp_path / 'given.db'}")
    given = flask_scoped_session(sessionmaker(engine))
    try:
        with given.fresh() as session:  # no context needed: its factory is given
            assert session.scalar(text("select 1")) == 1
    finally:
        engine.dispose()


async def test_async_config_session_outside_an_app_context(tmp_path: Path) -> None:
    """Awaited: the async ``fresh()`` of a config-made scoped session in a coroutine with no
    app context raises the same explanation before opening anything."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {
        "default": f"sqlite+aiosqlite:///{tmp_path / 'config.db'}"
    }
    scoped = async_scoped_session(app=app)
    with pytest.raises(RuntimeError, match=NO_CONTEXT):
        async with scoped.fresh():
            pass
    assert scoped.fresh_open == 0


@pytest.mark.parametrize("other_has_sessions", [False, True])
def test_config_session_in_an_app_it_is_not_initialised_on(
    tmp_path: Path, other_has_sessions: bool
) -> None:
    """``fresh()`` in the context of another app (one with no scoped session of this library,
    or one with a scoped session of its own) is refused: nothing would ever close the session
    in that app. The message names the app and the missing ``init_app(app)``; the other app's
    own scoped session is unaffected."""
    _, scoped = configured_app(tmp_path)
    other = Flask("other_app")
    other.config["SQLALCHEMY_ENGINES"] = {"default": f"sqlite:///{tmp_path / 'other.db'}"}
    own = flask_scoped_session(app=other) if other_has_sessions else None
    with other.app_context():
        with pytest.raises(RuntimeError, match=NOT_INITIALISED) as raised:
            with scoped.fresh():
                pass
        message = str(raised.value)
        assert repr(other) in message and "init_app(app)" in message
        assert message.startswith("This flask_scoped_session ")
        if own is not None:
            with own.fresh() as session:
                assert database_of(session) == str(tmp_path / "other.db")
    assert scoped.fresh_open == 0


def test_isolating_one_app_leaves_another_apps_sessions_alone(tmp_path: Path) -> None:
    """One scoped session (with its own sessionmaker) on two apps, one of them isolated: the
    isolated app's sessions join the test's connection, the other app's keep the engine and
    really commit, also from ``fresh()``; sessions made outside any context too."""
    engine = create_engine(f"sqlite:///{tmp_path / 'two_apps.db'}")
    Base.metadata.create_all(engine)
    scoped = flask_scoped_session(sessionmaker(engine))
    isolated, other = Flask("isolated_app"), Flask("other_app")
    scoped.init_app(isolated)
    scoped.init_app(other)
    try:
        with isolate(isolated) as db:
            with other.app_context():
                assert scoped().bind is engine
                scoped.add(Todo(title="kept"))
                scoped.commit()
                with scoped.fresh() as session:
                    assert session.bind is engine
            with scoped.fresh() as session:  # no app context: the given factory
                assert session.bind is engine
            with isolated.app_context():
                assert scoped().bind is db.connections[0]
                scoped.add(Todo(title="rolled back"))
                scoped.commit()
                assert scoped.scalar(COUNT) == 2
        with Session(engine) as check:
            assert check.scalars(select(Todo.title)).all() == ["kept"]
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()
