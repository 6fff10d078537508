"""EngineRegistry: no password in reprs, keys, session names, errors, tracebacks or logs."""

from __future__ import annotations

import logging
import traceback
import typing as t

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import (
    EngineRegistry,
    async_scoped_session,
    flask_scoped_session,
    get_scoped_session,
)

from .support.environment import HAS_QUART, needs_quart

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

# -- credentials -----------------------------------------------------------------------

SECRET_URL = "postgresql+psycopg://user:s3cret@127.0.0.1:1/x"


def test_credentials_hidden_in_reprs_keys_and_names() -> None:
    """No password in the registry's repr, its keys (with url_for) or its sessions' names."""
    by_tenant = EngineRegistry(lambda tenant: SECRET_URL.replace("/x", f"/{tenant}"))
    by_url = EngineRegistry()
    app = Flask(__name__)
    flask_scoped_session(sessionmaker(), app)
    by_tenant.init_app(app)
    by_url.init_app(app)
    try:
        by_tenant["acme"]
        by_url[SECRET_URL]
        assert repr(by_tenant) == "<EngineRegistry 1/8 [acme]>"
        assert by_tenant.keys() == ["acme"]
        assert repr(by_url) == "<EngineRegistry 1/8 [postgresql+psycopg://user:***@127.0.0.1:1/x]>"
        with app.app_context():
            with pytest.raises(KeyError) as info:
                get_scoped_session("nope")
        assert "s3cret" not in str(info.value)
    finally:
        by_tenant.close()
        by_url.close()


def test_credentials_hidden_in_errors_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """A failing connect and eviction: no password in the error, the traceback or any log."""
    caplog.set_level(logging.DEBUG)
    registry = EngineRegistry(max_engines=1)
    app = Flask(__name__)
    flask_scoped_session(sessionmaker(), app)
    registry.init_app(app)

    @app.get("/")
    def view() -> str:
        return str(t.cast(Session, registry[SECRET_URL]).execute(select(1)).scalar())

    with app.app_context():
        with pytest.raises(OperationalError) as info:
            t.cast(Session, registry[SECRET_URL]).execute(select(1))
    assert app.test_client().get("/").status_code == 500  # logged by Flask
    registry[SECRET_URL.replace("/x", "/y")]  # evicts the first engine: logged
    registry.close()
    text = "".join(traceback.format_exception(info.value))
    assert "Connection refused" in text and "s3cret" not in text
    assert "Exception on / [GET]" in caplog.text
    assert "Disposed the engine of postgresql+psycopg://user:***@127.0.0.1:1/x" in caplog.text
    assert "s3cret" not in caplog.text


@needs_quart
async def test_async_credentials_hidden_in_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same through Quart and asyncpg."""
    caplog.set_level(logging.DEBUG)
    url = SECRET_URL.replace("+psycopg", "+asyncpg")
    registry = EngineRegistry(is_async=True, max_engines=1)
    app = Quart(__name__)
    registry.init_app(app)

    @app.get("/")
    async def view() -> str:
        scoped = t.cast("async_scoped_session[AsyncSession]", registry[url])
        return str(await scoped.scalar(select(1)))

    async with app.test_app():
        async with app.app_context():
            with pytest.raises(OSError) as info:
                await t.cast("async_scoped_session[AsyncSession]", registry[url]).scalar(select(1))
        assert (await app.test_client().get("/")).status_code == 500
        registry[url.replace("/x", "/y")]
    text = "".join(traceback.format_exception(info.value))
    assert "s3cret" not in text
    assert "Disposed the engine of postgresql+asyncpg://user:***@127.0.0.1:1/x" in caplog.text
    assert "Exception on request GET /" in caplog.text
    assert "s3cret" not in caplog.text
