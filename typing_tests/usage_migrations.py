"""Engines for migrations: ``get_engine()`` is exactly typed, ``metadata=``, ``migrations``."""

from __future__ import annotations

from typing import assert_type

from flask import Flask
from quart import Quart
from sqlalchemy import Engine, MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from async_scoped_session_ext import async_scoped_session, flask_scoped_session
from async_scoped_session_ext.migrations import Target, engine_names, run_migrations, targets

from .models import Base


def engines(app: Flask, quart_app: Quart) -> None:
    """A sync scoped session's engine is an ``Engine``, an async one's an ``AsyncEngine``."""
    session = flask_scoped_session(app=app, metadata=Base.metadata)
    asession = async_scoped_session(app=quart_app, name="users", metadata=MetaData())
    assert_type(session.get_engine(), Engine)
    assert_type(session.get_engine(app), Engine)
    assert_type(asession.get_engine(), AsyncEngine)
    assert_type(asession.get_engine(quart_app), AsyncEngine)
    assert_type(session.metadata, MetaData | None)
    session.get_engine("app")  # type: ignore[arg-type]
    flask_scoped_session(metadata="Base.metadata")  # type: ignore[arg-type]


def env_py(app: Flask) -> None:
    """What ``env.py`` and ``script.py.mako`` call."""
    run_migrations()
    run_migrations(target_metadata=Base.metadata)
    run_migrations(target_metadata={"default": Base.metadata}, app=app)
    assert_type(engine_names(), list[str])
    found = targets(app)
    assert_type(found, list[Target])
    assert_type(found[0].engine, Engine | AsyncEngine)
