"""A sync Flask app: ``flask_scoped_session``, ``current_session`` and ``Model.query``."""

from __future__ import annotations

import typing as t
from collections.abc import Sequence
from typing import assert_type

from flask import Flask
from sqlalchemy import Result, create_engine, func, select
from sqlalchemy.orm import Query, Session, sessionmaker
from sqlalchemy.orm.identity import IdentityMap
from sqlalchemy.util import IdentitySet

from async_scoped_session_ext import (
    async_scoped_session,
    current_session,
    flask_scoped_session,
    get_scoped_session,
)

from .models import Base, User

AnyScoped: t.TypeAlias = flask_scoped_session[t.Any] | async_scoped_session[t.Any]


def create_app() -> Flask:
    """The Flask-SQLAlchemy-Session way: a factory, the app, ``Base.query``."""
    engine = create_engine("sqlite://")
    app = Flask(__name__)
    session = flask_scoped_session(sessionmaker(bind=engine), app)
    assert_type(session, flask_scoped_session[Session])
    Base.query = session.query_property()

    @app.get("/users")
    def list_users() -> list[dict[str, object]]:
        users = User.query.order_by(User.id).all()
        assert_type(User.query, Query[User])
        assert_type(users, list[User])
        return [{"id": user.id, "name": user.name} for user in users]

    @app.post("/users")
    def add_user() -> tuple[dict[str, object], int]:
        user = User(name="ada")
        current_session.add(user)
        current_session.commit()
        return {"id": user.id}, 201

    @app.get("/count")
    def count_users() -> dict[str, int]:
        count = session.scalar(select(func.count()).select_from(User))
        assert_type(count, int | None)
        return {"count": count or 0}

    return app


def scoped_session_types(session: flask_scoped_session[Session], user: User) -> None:
    """The scoped session object keeps SQLAlchemy's exact types."""
    assert_type(session(), Session)
    assert_type(session.execute(select(User.id, User.name)), Result[int, str])
    assert_type(session.scalars(select(User)).all(), Sequence[User])
    assert_type(session.get(User, 1), User | None)
    assert_type(session.query(User).first(), User | None)
    assert_type(session.remove(), None)
    assert_type(session.name, str)
    assert_type(session.is_async, bool)
    assert_type(session.session_factory, sessionmaker[Session])
    with session.fresh(expire_on_commit=False) as own:
        assert_type(own, Session)
        own.add(user)
        own.commit()


def current_session_types(user: User) -> None:
    """``current_session``: exact where sync and async agree, ``Any`` where they differ."""
    assert_type(current_session.add(user), None)
    assert_type(current_session.add_all([user]), None)
    assert_type(current_session.expunge(user), None)
    assert_type(current_session.is_modified(user), bool)
    assert_type(current_session.new, IdentitySet)
    assert_type(current_session.dirty, IdentitySet)
    assert_type(current_session.identity_map, IdentityMap)
    assert_type(current_session.is_active, bool)
    current_session.info["use_primary"] = True
    with current_session.no_autoflush:
        current_session.add(user)
    # I/O returns a result here and an awaitable in async code: Any, arguments checked.
    assert_type(current_session.execute(select(User)), t.Any)
    current_session.execute(select(User), {"id": 1}, execution_options={"stream_results": True})
    current_session.get(User, 1, populate_existing=True)
    current_session.commit()
    # Plain SQL strings are no statements in SQLAlchemy 2 (text() is needed).
    current_session.execute("SELECT 1")  # type: ignore[arg-type]
    current_session.scalar(select(User.id), bind_args={})  # type: ignore[call-arg]
    # Calling it gives the context's Session: annotate what the code knows.
    own: Session = current_session()
    assert_type(own, Session)
    # Flask-SQLAlchemy-Session's way to reach the scoped session itself (werkzeug's name).
    scoped = current_session._get_current_object()  # pyright: ignore[reportPrivateUsage]
    assert_type(scoped, AnyScoped)
    # Legacy sync-only API, looked up at run time.
    current_session.query(User).all()


def factory_pattern() -> Flask:
    """Module-level sessions made without a factory, initialised in the app factory."""
    default = flask_scoped_session()
    analytics = flask_scoped_session(name="analytics", session_options={"autoflush": False})
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": "sqlite://", "analytics": "sqlite://"}
    default.init_app(app)
    analytics.init_app(app)
    with app.app_context():
        scoped = get_scoped_session("analytics")
        assert_type(scoped, AnyScoped)
        if isinstance(scoped, flask_scoped_session):  # narrowed: the sync-only API is there
            assert_type(scoped.query(User), Query[User])
    return app
