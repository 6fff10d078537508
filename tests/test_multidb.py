"""Several databases on one app: named scoped sessions and SQLAlchemy binds."""

from __future__ import annotations

import collections.abc as cabc
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, String, create_engine, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from async_scoped_session_ext import (
    async_scoped_session,
    current_session,
    flask_scoped_session,
    get_scoped_session,
)

from .support.environment import HAS_QUART, needs_quart
from .support.models import Base, Todo

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart


class AnalyticsBase(DeclarativeBase):
    pass


class Event(AnalyticsBase):
    __tablename__ = "asse_test_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


@pytest.fixture
def analytics_engine(tmp_path: Path) -> cabc.Iterator[Engine]:
    """A second database (a SQLite file) for the analytics models."""
    engine = create_engine(f"sqlite:///{tmp_path / 'analytics.db'}")
    AnalyticsBase.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_named_sessions_on_one_app(sync_engine: Engine, analytics_engine: Engine) -> None:
    """A primary and an analytics session, reachable by name; current_session is the default."""
    app = Flask(__name__)
    primary = flask_scoped_session(sessionmaker(bind=sync_engine), app)
    analytics = flask_scoped_session(sessionmaker(bind=analytics_engine), app, name="analytics")
    with app.app_context():
        assert current_session._get_current_object() is primary
        assert get_scoped_session() is primary
        assert get_scoped_session("analytics") is analytics
        assert app.scoped_session is primary  # type: ignore[attr-defined]
        get_scoped_session("analytics").add(Event(name="signup"))
        get_scoped_session("analytics").commit()
        current_session.add(Todo(title="primary"))
        current_session.commit()
        assert analytics() is not primary()
    with Session(analytics_engine) as check:
        assert check.scalar(select(func.count()).select_from(Event)) == 1
    with Session(sync_engine) as check:
        assert check.scalar(select(func.count()).select_from(Todo)) == 1


def test_unknown_name_says_which_exist(sync_engine: Engine) -> None:
    """Asking for a name the app does not have lists the names it has."""
    app = Flask(__name__)
    flask_scoped_session(sessionmaker(bind=sync_engine), app)
    with app.app_context():
        with pytest.raises(KeyError, match=r"no scoped session named 'reports'.*\['default'\]"):
            get_scoped_session("reports")


def test_binds_per_model(sync_engine: Engine, analytics_engine: Engine) -> None:
    """SQLAlchemy binds route each model to its database through one scoped session."""
    app = Flask(__name__)
    factory = sessionmaker(binds={Base: sync_engine, AnalyticsBase: analytics_engine})
    flask_scoped_session(factory, app)

    @app.post("/")
    def both() -> str:
        current_session.add_all([Todo(title="t"), Event(name="e")])
        current_session.commit()
        todos = current_session.scalar(select(func.count()).select_from(Todo))
        events = current_session.scalar(select(func.count()).select_from(Event))
        return f"{todos} {events}"

    assert app.test_client().post("/").text == "1 1"
    with Session(analytics_engine) as check:
        assert check.scalar(select(func.count()).select_from(Event)) == 1


@needs_quart
async def test_named_async_sessions_on_quart(async_engine: AsyncEngine, tmp_path: Path) -> None:
    """Named async sessions work the same way in Quart views."""
    from sqlalchemy.ext.asyncio import create_async_engine

    other = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    async with other.begin() as conn:
        await conn.run_sync(AnalyticsBase.metadata.create_all)
    app = Quart(__name__)
    primary = async_scoped_session(async_sessionmaker(async_engine), app)
    async_scoped_session(async_sessionmaker(other), app, name="analytics")

    @app.post("/")
    async def view() -> str:
        assert current_session._get_current_object() is primary
        analytics = t.cast("async_scoped_session[AsyncSession]", get_scoped_session("analytics"))
        analytics.add(Event(name="async"))
        await analytics.commit()
        return str(await analytics.scalar(select(func.count()).select_from(Event)))

    response = await app.test_client().post("/")
    assert await response.get_data(as_text=True) == "1"
    await other.dispose()
