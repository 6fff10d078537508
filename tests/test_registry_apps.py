"""EngineRegistry in apps: an app with only a registry, the app's own session apart from the
tenants' (current_session, a tenant called "default"), and init_app on a second app or twice.
"""

from __future__ import annotations

import contextvars
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

from .support.environment import HAS_QUART, needs_quart
from .support.tenants import sqlite_tenants as _sqlite_tenants

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

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


# -- init_app: a second app, the same app twice ------------------------------------------


def test_a_second_app_shares_the_engines_made_before_it(tmp_path: Path) -> None:
    """``init_app`` on a second app scopes the engines made so far to its contexts too.

    That includes an evicted engine still busy in the first app's context: the second app's
    context gets a session of its own from it, and no engine is made twice.
    """
    _sqlite_tenants(tmp_path, ["t0", "t1"])
    registry = EngineRegistry(lambda key: f"sqlite:///{tmp_path / key}.db", max_engines=1)
    first, second = Flask("first"), Flask("second")
    registry.init_app(first)

    def in_the_second_app() -> list[object]:
        with second.app_context():
            sessions: list[object] = []
            for tenant in ("t0", "t1"):
                scoped = t.cast("flask_scoped_session[Session]", registry[tenant])
                assert scoped.scalar(select(1)) == 1
                sessions.append(scoped())
            return sessions

    try:
        with first.app_context():
            busy = t.cast(Session, registry["t0"]())
            busy.execute(select(1))
            registry["t1"]  # evicts t0, whose session is open here
            assert (registry.keys(), len(registry)) == (["t1"], 2)
            registry.init_app(second)  # attaches t1 and the evicted t0
            theirs = contextvars.Context().run(in_the_second_app)
            assert all(session is not busy for session in theirs)
            assert busy.execute(select(1)).scalar() == 1
            assert registry.created == 2  # t0 was taken back, not made again
        assert registry.reap() == 0
    finally:
        registry.close()
    assert (registry.created, registry.disposed, len(registry)) == (2, 2, 0)


@needs_quart
async def test_init_app_twice_before_any_engine_sets_the_app_up_once(tmp_path: Path) -> None:
    """A second ``init_app(app)`` of a registry without engines adds nothing to the app."""
    _sqlite_tenants(tmp_path, ["t0"])
    registry = EngineRegistry(lambda key: f"sqlite+aiosqlite:///{tmp_path / key}.db", is_async=True)
    app = Quart(__name__)
    registry.init_app(app)
    registry.init_app(app)
    assert app.after_serving_funcs.count(registry.aclose) == 1

    @app.get("/<tenant>")
    async def view(tenant: str) -> str:
        scoped = t.cast("async_scoped_session[AsyncSession]", registry[tenant])
        return str(await scoped.scalar(select(1)))

    async with app.test_app():
        assert await (await app.test_client().get("/t0")).get_data(as_text=True) == "1"
    assert (registry.created, registry.disposed, len(registry)) == (1, 1, 0)


def test_init_app_again_after_engines_were_made_changes_nothing(tmp_path: Path) -> None:
    """A second ``init_app(app)`` once engines exist is harmless too: no error, the same
    engines and the same session in the app's contexts."""
    _sqlite_tenants(tmp_path, ["t0"])
    registry = EngineRegistry(lambda key: f"sqlite:///{tmp_path / key}.db")
    app = Flask(__name__)
    registry.init_app(app)
    try:
        with app.app_context():
            first = t.cast(Session, registry["t0"]())
            registry.init_app(app)
            assert registry["t0"]() is first
            assert first.scalar(select(1)) == 1
        assert (registry.created, len(registry)) == (1, 1)
    finally:
        registry.close()
    assert (registry.created, registry.disposed, len(registry)) == (1, 1, 0)
