"""TenantURLs as an EngineRegistry's url_for, in Flask and Quart apps on real databases.

Two tenant databases per test (SQLite files, or PostgreSQL databases created and dropped
around it); the tenant key comes from the request's JSON, so it may be any string. A key
that TenantURLs refuses gets a 400 before the registry makes an engine for it.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t
from pathlib import Path

import pytest
from flask import Flask, request
from sqlalchemy import URL, create_engine, make_url, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from async_scoped_session_ext import EngineRegistry, async_scoped_session, flask_scoped_session
from async_scoped_session_ext.tenants import InvalidTenantKey, TenantURLs

from .support.databases import postgres_url
from .support.environment import needs_quart
from .support.extra_databases import database_url, postgres_databases
from .support.tenants import Note, TenantBase, sqlite_tenants

KEYS = ["acme", "globex"]

#: Refused whatever the pattern: each has a character with a meaning in a URL, or is huge.
URL_HOSTILE = [
    "adv?host=127.0.0.1:5441",
    "acme?host=127.0.0.1&port=5441",
    "a/b",
    "../acme",
    "a@b",
    "a:b",
    "a%2fb",
    "acme\n",
    "a\nb",
    "x" * 10_000,
]
#: The default pattern, which refuses more, and one that accepts anything.
PATTERNS = [
    pytest.param(None, [*URL_HOSTILE, "", "Acme", "\u0430cme"], id="default"),  # Cyrillic a
    pytest.param(r"(?s).*", URL_HOSTILE, id="anything"),
]


@pytest.fixture
def tenant_databases() -> cabc.Iterator[dict[str, str]]:
    """``<test database>_tenant_acme`` and ``..._tenant_globex``, with the notes table."""
    with postgres_databases(*(f"tenant_{key}" for key in KEYS)) as names:
        for name in names.values():
            engine = create_engine(database_url(name, "psycopg"))
            TenantBase.metadata.create_all(engine)
            engine.dispose()
        yield names


def template_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str | URL:
    """The tenants' template URL for *backend*, its tenant databases made."""
    if backend in ("sqlite", "aiosqlite"):
        sqlite_tenants(tmp_path, KEYS)
        scheme = "sqlite" if backend == "sqlite" else "sqlite+aiosqlite"
        return f"{scheme}:///{tmp_path}/{{key}}.db"
    names: dict[str, str] = request.getfixturevalue("tenant_databases")
    prefix = names["tenant_acme"].removesuffix("acme")
    driver = "psycopg" if backend == "postgresql" else "asyncpg"
    return make_url(postgres_url(driver)).set(database=prefix + "{key}")


def urls_for(template: str | URL, pattern: str | None) -> TenantURLs:
    return TenantURLs(template) if pattern is None else TenantURLs(template, pattern=pattern)


def tenant_of_request(body: t.Any) -> str:
    return str(body["tenant"])


def flask_app(registry: EngineRegistry) -> Flask:
    """A Flask app: POST /notes with {"tenant": key} writes a note and lists what it sees."""
    app = Flask(__name__)
    registry.init_app(app)

    @app.errorhandler(InvalidTenantKey)
    def refused(error: InvalidTenantKey) -> tuple[dict[str, str], int]:
        return {"error": str(error)}, 400

    @app.post("/notes")
    def write() -> dict[str, list[str]]:
        key = tenant_of_request(request.get_json())
        session = t.cast("flask_scoped_session[Session]", registry[key])
        session.add(Note(tenant=key))
        session.commit()
        return {"seen": sorted(set(session.scalars(select(Note.tenant))))}

    return app


@pytest.mark.parametrize(("pattern", "hostile"), PATTERNS)
def test_flask_serves_tenants_and_refuses_hostile_keys(
    sync_backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    pattern: str | None,
    hostile: list[str],
) -> None:
    """Hostile keys get a 400 and no engine; each tenant then sees its own database only."""
    registry = EngineRegistry(urls_for(template_for(sync_backend, tmp_path, request), pattern))
    client = flask_app(registry).test_client()
    try:
        for key in hostile:
            response = client.post("/notes", json={"tenant": key})
            assert response.status_code == 400, key
            assert "is refused" in response.json["error"]  # type: ignore[index]
        assert registry.created == 0 and registry.keys() == []
        for key in ("acme", "globex", "acme"):
            response = client.post("/notes", json={"tenant": key})
            assert response.status_code == 200 and response.json == {"seen": [key]}
        assert (registry.created, registry.keys()) == (2, ["globex", "acme"])
    finally:
        registry.close()
    assert registry.created == registry.disposed


@needs_quart
@pytest.mark.parametrize(("pattern", "hostile"), PATTERNS)
async def test_quart_serves_tenants_and_refuses_hostile_keys(
    async_backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    pattern: str | None,
    hostile: list[str],
) -> None:
    """The same in Quart on aiosqlite and asyncpg; engines are disposed after serving."""
    from quart import Quart
    from quart import request as quart_request

    registry = EngineRegistry(
        urls_for(template_for(async_backend, tmp_path, request), pattern),
        is_async=True,
        session_options={"expire_on_commit": False},
    )
    app = Quart(__name__)
    registry.init_app(app)

    @app.errorhandler(InvalidTenantKey)
    async def refused(error: InvalidTenantKey) -> tuple[dict[str, str], int]:
        return {"error": str(error)}, 400

    @app.post("/notes")
    async def write() -> dict[str, list[str]]:
        key = tenant_of_request(await quart_request.get_json())
        session = t.cast("async_scoped_session[AsyncSession]", registry[key])
        session.add(Note(tenant=key))
        await session.commit()
        return {"seen": sorted(set(await session.scalars(select(Note.tenant))))}

    async with app.test_app() as test_app:
        client = test_app.test_client()
        for key in hostile:
            response = await client.post("/notes", json={"tenant": key})
            assert response.status_code == 400, key
            assert "is refused" in (await response.get_json())["error"]
        assert registry.created == 0 and registry.keys() == []
        for key in ("acme", "globex", "acme"):
            response = await client.post("/notes", json={"tenant": key})
            assert response.status_code == 200
            assert await response.get_json() == {"seen": [key]}
        assert registry.created == 2
    assert len(registry) == 0 and registry.disposed == 2
