"""The model signals and ``commit_on_success``, as a user of either writes them."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import async_scoped_session, flask_scoped_session
from async_scoped_session_ext.signals import before_models_committed, models_committed


def create_app() -> Flask:
    """An app that commits on success and reports what its commits changed."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = True
    sync: flask_scoped_session[Session] = flask_scoped_session(
        sessionmaker(create_engine("sqlite://")), app, commit_on_success=True
    )
    asession: async_scoped_session[AsyncSession] = async_scoped_session(
        async_sessionmaker(create_async_engine("sqlite+aiosqlite://")),
        app,
        commit_on_success=True,
    )
    assert sync.commit_on_success and asession.commit_on_success

    @models_committed.connect_via(app)
    def on_committed(sender: Flask, changes: list[tuple[object, str]]) -> None:
        for instance, operation in changes:
            print(type(instance).__name__, operation)

    before_models_committed.connect(on_committed, app)
    return app
