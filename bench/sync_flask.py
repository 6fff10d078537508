"""Sync Flask apps that run the same query five ways: ours, by hand, two extensions, none.

Every app has one view, ``GET /item``, that returns the item's name (the floor returns it
without asking the database).
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

from flask import Flask
from flask_sqlalchemy import SQLAlchemy as FlaskSQLAlchemy
from flask_sqlalchemy_lite import SQLAlchemy as FlaskSQLAlchemyLite
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import current_session, flask_scoped_session

from .db import ITEM_NAME, Databases
from .measure import FLOOR, FSA, HAND, LITE, OURS

PATH = "/item"
BODY = ITEM_NAME.encode()


class SyncApp(t.NamedTuple):
    app: Flask
    close: cabc.Callable[[], None]  # disposes the app's engines


def floor_app(dbs: Databases, url: str) -> SyncApp:
    """No database at all: what Flask itself costs."""
    app = Flask("bench_floor")

    @app.get(PATH)
    def item() -> str:
        return ITEM_NAME

    return SyncApp(app, lambda: None)


def ours_app(dbs: Databases, url: str) -> SyncApp:
    """``flask_scoped_session`` and ``current_session`` in the view."""
    app = Flask("bench_ours")
    engine = create_engine(url)
    flask_scoped_session(sessionmaker(engine), app)
    query = dbs.query

    @app.get(PATH)
    def item() -> str:
        return str(current_session.execute(query).scalar_one())

    return SyncApp(app, engine.dispose)


def hand_app(dbs: Databases, url: str) -> SyncApp:
    """A session opened and closed in the view by hand."""
    app = Flask("bench_hand")
    engine: Engine = create_engine(url)
    query = dbs.query

    @app.get(PATH)
    def item() -> str:
        with Session(engine) as session:
            return str(session.execute(query).scalar_one())

    return SyncApp(app, engine.dispose)


class _Extension(t.Protocol):
    """What both extensions offer: a request-scoped ``session`` and the app's ``engine``."""

    @property
    def session(self) -> Session: ...
    @property
    def engine(self) -> Engine: ...


def _extension_app(app: Flask, db: _Extension, dbs: Databases) -> SyncApp:
    """*app* with the view running the query through the extension's ``db.session``."""
    query = dbs.query

    @app.get(PATH)
    def item() -> str:
        return str(db.session.execute(query).scalar_one())

    def close() -> None:
        with app.app_context():
            db.engine.dispose()

    return SyncApp(app, close)


def fsa_app(dbs: Databases, url: str) -> SyncApp:
    """Flask-SQLAlchemy's ``db.session``."""
    app = Flask("bench_fsa")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = FlaskSQLAlchemy()
    db.init_app(app)
    return _extension_app(app, t.cast(_Extension, db), dbs)


def lite_app(dbs: Databases, url: str) -> SyncApp:
    """flask-sqlalchemy-lite's ``db.session``."""
    app = Flask("bench_lite")
    app.config["SQLALCHEMY_ENGINES"] = {"default": url}
    return _extension_app(app, t.cast(_Extension, FlaskSQLAlchemyLite(app)), dbs)


BUILDERS: dict[str, cabc.Callable[[Databases, str], SyncApp]] = {
    OURS: ours_app,
    HAND: hand_app,
    FSA: fsa_app,
    LITE: lite_app,
    FLOOR: floor_app,
}
