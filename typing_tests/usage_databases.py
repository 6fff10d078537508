"""Several databases: ``EngineRegistry``, ``get_scoped_session``, PgBouncer, read replicas."""

from __future__ import annotations

import typing as t
from typing import assert_type

from flask import Flask
from quart import Quart
from sqlalchemy import URL, create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import (
    EngineRegistry,
    async_scoped_session,
    flask_scoped_session,
    get_scoped_session,
)
from async_scoped_session_ext._proxy import SessionSurface
from async_scoped_session_ext.pgbouncer import transaction_mode
from async_scoped_session_ext.replicas import (
    ReplicaSession,
    async_replica_sessionmaker,
    replica_sessionmaker,
)

from .models import User

AnyScoped: t.TypeAlias = flask_scoped_session[t.Any] | async_scoped_session[t.Any]


def tenants(app: Flask) -> None:
    """A registry keyed by tenant: each key's scoped session, sync or async by ``is_async``."""
    registry = EngineRegistry(
        lambda tenant: f"sqlite:///{tenant}.db",
        max_engines=4,
        engine_options={"pool_pre_ping": True},
        session_options={"expire_on_commit": False},
        app=app,
    )
    with app.app_context():
        scoped = registry["acme"]
        assert_type(scoped, AnyScoped)
        # Which kind is known from is_async, not from the type: narrow it.
        if isinstance(scoped, flask_scoped_session):
            assert_type(scoped.execute(select(User)).scalars().first(), User | None)
        sync = t.cast("flask_scoped_session[Session]", registry["globex"])
        assert_type(sync(), Session)
    assert_type(registry.keys(), list[str])
    assert_type(len(registry), int)
    assert_type(registry.reap(), int)
    assert_type(registry.created, int)
    assert_type(registry.disposed, int)
    assert_type(registry.max_engines, int)
    registry.close()
    EngineRegistry(lambda tenant: URL.create("sqlite", database=f"{tenant}.db"))
    EngineRegistry(lambda tenant: 42)  # type: ignore[arg-type, return-value]


async def async_tenants(app: Quart) -> None:
    """An async registry on a Quart app, closed after serving."""
    registry = EngineRegistry(is_async=True, app=app)
    scoped = t.cast("async_scoped_session[AsyncSession]", registry["sqlite+aiosqlite:///a.db"])
    assert_type(await scoped.scalar(select(User.id).where(User.name == "ada")), int | None)
    await registry.aclose()


def named_sessions(app: Flask) -> None:
    """``get_scoped_session(name)`` is either kind; the caller narrows or annotates."""
    flask_scoped_session(sessionmaker(create_engine("sqlite://")), app, name="analytics")
    with app.app_context():
        scoped = get_scoped_session("analytics")
        assert_type(scoped, AnyScoped)
        assert_type(get_scoped_session(), AnyScoped)
        get_scoped_session(name=1)  # type: ignore[arg-type]


def pgbouncer() -> None:
    """``transaction_mode`` returns ``create_async_engine`` keyword arguments."""
    options = transaction_mode("postgresql+asyncpg://app@pgbouncer/app", pool_size=5)
    assert_type(options, dict[str, t.Any])
    engine = create_async_engine(**options)
    url = URL.create("postgresql+asyncpg", host="pgbouncer", database="app")
    app = Flask(__name__)
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": transaction_mode(url)}
    async_scoped_session(async_sessionmaker(engine), app)


def replicas(app: Flask) -> None:
    """Read replicas, sync and async: the session class flows into the scoped session."""
    factory = replica_sessionmaker(create_engine("sqlite://"), create_engine("sqlite://"))
    assert_type(factory, sessionmaker[ReplicaSession])
    scoped = flask_scoped_session(factory, app)
    assert_type(scoped, flask_scoped_session[ReplicaSession])
    with app.app_context():
        session = scoped()
        assert_type(session.wrote, bool)
        session.info["use_primary"] = True
    primary = create_async_engine("sqlite+aiosqlite://")
    replica = create_async_engine("sqlite+aiosqlite://")
    async_factory = async_replica_sessionmaker(primary, replica, expire_on_commit=False)
    assert_type(async_factory, async_sessionmaker[AsyncSession])
    replica_sessionmaker(primary, replica)  # type: ignore[arg-type]


def surface_is_shared(
    sync: flask_scoped_session[Session], async_: async_scoped_session[AsyncSession]
) -> None:
    """Both scoped session classes match the surface ``current_session`` declares."""
    surface: SessionSurface = sync
    surface = async_
    assert_type(surface.is_active, bool)
