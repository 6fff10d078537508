"""EngineRegistry in apps: an app with only a registry, and the app's own session apart from
the tenants' (current_session, a tenant called "default").
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import (
    EngineRegistry,
    async_scoped_session,
    current_session,
    flask_scoped_session,
)

from .support.tenants import sqlite_tenants as _sqlite_tenants

# -- the app's own session and the registry's ------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_flask_app_with_only_a_registry(tmp_path: Path, is_async: bool) -> None:
    """A Flask app whose only scoped sessions come from a registry serves requests."""
    _sqlite_tenants(tmp_path, ["t0"])
    scheme = "sqlite+aiosqlite" if is_async else "sqlite"
    registry = EngineRegistry(lambda key: f"{scheme}:///{tmp_path / key}.db", is_async=is_async)
    app = Flask(__name__)
    app.testing = True  # exceptions propagate out of the test client
    registry.init_app(app)

    @app.get("/sync/<tenant>")
    def sync_view(tenant: str) -> str:
        return str(t.cast(Session, registry[tenant]).scalar(select(1)))

    @app.get("/async/<tenant>")
    async def async_view(tenant: str) -> str:
        scoped = t.cast("async_scoped_session[AsyncSession]", registry[tenant])
        return str(await scoped.scalar(select(1)))

    try:
        path = "/async/t0" if is_async else "/sync/t0"
        assert app.test_client().get(path).text == "1"
    finally:
        registry.close()


def test_current_session_is_never_a_tenants_session(tmp_path: Path) -> None:
    """In an app with only a registry, current_session does not stand for a tenant's session."""
    _sqlite_tenants(tmp_path, ["t0", "t1"])
    registry = EngineRegistry(lambda key: f"sqlite:///{tmp_path / key}.db")
    app = Flask(__name__)
    registry.init_app(app)
    try:
        with app.app_context():
            tenants = {id(registry["t0"]), id(registry["t1"])}
            try:
                default: object = current_session._get_current_object()
            except (AttributeError, RuntimeError, KeyError):
                default = None
            assert id(default) not in tenants
            assert id(getattr(app, "scoped_session", None)) not in tenants
    finally:
        registry.close()


def test_tenant_called_default_leaves_the_apps_session_alone(tmp_path: Path) -> None:
    """A tenant whose key is "default" does not become current_session."""
    _sqlite_tenants(tmp_path, ["default"])
    app = Flask(__name__)
    own = flask_scoped_session(sessionmaker(), app)
    registry = EngineRegistry(lambda key: f"sqlite:///{tmp_path / key}.db", app=app)
    try:
        with app.app_context():
            registry["default"]
            assert current_session._get_current_object() is own
            assert app.scoped_session is own  # type: ignore[attr-defined]
    finally:
        registry.close()
