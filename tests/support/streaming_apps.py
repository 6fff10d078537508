"""Apps on a real primary and its streaming standby: Flask sync (psycopg), Flask async and
Quart (asyncpg), each with the same three views.

``GET /where`` reads ``pg_is_in_recovery()`` (true on the standby); ``POST /notes?name=``
commits a note and reads it back in the same request; ``GET /notes/<id>`` says whether the
note is found and where the read went. The replica engines ping their connections at
checkout (``pool_pre_ping``) and give up connecting after 2 s.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import typing as t

from flask import Flask, request
from sqlalchemy import String, create_engine, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session
from async_scoped_session_ext._runner import runner
from async_scoped_session_ext.replicas import (
    StickyPrimary,
    async_replica_sessionmaker,
    replica_sessionmaker,
)

from .environment import HAS_QUART
from .standby import StreamingPair

if t.TYPE_CHECKING:
    from flask.sansio.app import App  # Flask >= 3.0: only for the type

if HAS_QUART:
    from quart import Quart
    from quart import request as quart_request

KINDS = ["flask", "flask-async", "quart"]
LOGGER = "async_scoped_session_ext.replicas"


class StreamBase(DeclarativeBase):
    pass


class Note(StreamBase):
    __tablename__ = "asse_stream_note"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


@contextlib.contextmanager
def notes_table(pair: StreamingPair) -> cabc.Iterator[None]:
    """A fresh notes table on the primary, replayed on the standby before the test."""
    engine = create_engine(pair.url("primary"))
    try:
        StreamBase.metadata.drop_all(engine)
        StreamBase.metadata.create_all(engine)
        pair.wait_replayed()
        yield
    finally:
        StreamBase.metadata.drop_all(engine)
        engine.dispose()


def _where() -> t.Any:
    return select(func.pg_is_in_recovery())


def _found(note_id: int) -> t.Any:
    return select(func.count()).select_from(Note).where(Note.id == note_id)


def flask_app(pair: StreamingPair, *, sticky: bool = False, **options: t.Any) -> Flask:
    """A sync Flask app on psycopg engines (its ``engines`` in ``app.extensions``)."""
    primary = create_engine(pair.url("primary"))
    standby = create_engine(
        pair.url("standby"), pool_pre_ping=True, connect_args={"connect_timeout": 2}
    )
    app = Flask(__name__)
    app.secret_key = "streaming tests"
    scoped = flask_scoped_session(replica_sessionmaker(primary, standby, **options), app)
    if sticky:
        app.extensions["test_sticky"] = StickyPrimary(scoped, app, seconds=5)
    app.extensions["test_engines"] = (primary, standby)

    @app.get("/where")
    def where() -> dict[str, t.Any]:
        return {"standby": current_session.scalar(_where())}

    @app.post("/notes")
    def write() -> dict[str, t.Any]:
        note = Note(name=request.args["name"])
        current_session.add(note)
        current_session.flush()
        note_id, name = note.id, note.name
        current_session.commit()
        read_back = current_session.scalar(select(Note.name).where(Note.id == note_id))
        return {"id": note_id, "read_back": read_back == name}

    @app.get("/notes/<int:note_id>")
    def read(note_id: int) -> dict[str, t.Any]:
        found = current_session.scalar(_found(note_id))
        return {"found": found == 1, "standby": current_session.scalar(_where())}

    return app


def _async_engines(pair: StreamingPair) -> tuple[AsyncEngine, AsyncEngine]:
    primary = create_async_engine(pair.url("primary", "asyncpg"))
    standby = create_async_engine(
        pair.url("standby", "asyncpg"), pool_pre_ping=True, connect_args={"timeout": 2}
    )
    return primary, standby


def async_app(kind: str, pair: StreamingPair, *, sticky: bool = False, **options: t.Any) -> t.Any:
    """A Flask app with async views, or a Quart app, on asyncpg engines."""
    primary, standby = _async_engines(pair)
    app: App = Quart(__name__) if kind == "quart" else Flask(__name__)

    def args() -> t.Mapping[str, str]:
        return quart_request.args if kind == "quart" else request.args

    app.secret_key = "streaming tests"
    factory = async_replica_sessionmaker(primary, standby, **options)
    scoped = async_scoped_session(factory, app)
    if sticky:
        app.extensions["test_sticky"] = StickyPrimary(scoped, app, seconds=5)
    app.extensions["test_engines"] = (primary, standby)

    @app.get("/where")
    async def where() -> dict[str, t.Any]:
        return {"standby": await current_session.scalar(_where())}

    @app.post("/notes")
    async def write() -> dict[str, t.Any]:
        note = Note(name=args()["name"])
        current_session.add(note)
        await current_session.flush()
        note_id, name = note.id, note.name
        await current_session.commit()
        read_back = await current_session.scalar(select(Note.name).where(Note.id == note_id))
        return {"id": note_id, "read_back": read_back == name}

    @app.get("/notes/<int:note_id>")
    async def read(note_id: int) -> dict[str, t.Any]:
        found = await current_session.scalar(_found(note_id))
        return {"found": found == 1, "standby": await current_session.scalar(_where())}

    return app


def make_app(kind: str, pair: StreamingPair, **options: t.Any) -> t.Any:
    """The app of *kind* (``KINDS``) on *pair*, its replica session given *options*."""
    if kind == "flask":
        return flask_app(pair, **options)
    return async_app(kind, pair, **options)


def checked_out(app: t.Any) -> int:
    """How many connections the app's engines have checked out."""
    total = 0
    for engine in app.extensions["test_engines"]:
        core = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        total += t.cast(t.Any, core.pool).checkedout()
    return total


def dispose_sync(app: t.Any) -> None:
    """Dispose a Flask app's engines (async ones on the shared loop, where they live)."""
    for engine in app.extensions["test_engines"]:
        if isinstance(engine, AsyncEngine):
            runner.run(engine.dispose())
        else:
            engine.dispose()


async def dispose_async(app: t.Any) -> None:
    """Dispose a Quart app's engines, on the test's loop."""
    for engine in app.extensions["test_engines"]:
        await engine.dispose()
