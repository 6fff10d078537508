"""The multi-tenant Quart example: tenants from a header, isolated, engines evicted."""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import typing as t
from pathlib import Path

import pytest

from .support.environment import QUART_MISSING

pytest.importorskip("quart", reason=QUART_MISSING)

from quart import Quart
from quart.typing import TestClientProtocol as QuartClient

from examples.tenants.app import create_app, registry_of

TENANTS = ["acme", "globex", "initech", "umbrella", "hooli"]


@pytest.fixture
def app(tmp_path: Path) -> Quart:
    """The example with five tenants and room for two engines."""
    return create_app(tmp_path, TENANTS, max_engines=2)


@pytest.fixture
async def client(app: Quart) -> cabc.AsyncIterator[QuartClient]:
    """A test client of the served app; serving ends (and engines are disposed) afterwards."""
    async with app.test_app() as test_app:
        yield test_app.test_client()
    registry = registry_of(app)
    assert len(registry) == 0 and registry.created == registry.disposed


async def add(client: QuartClient, tenant: str, text: str) -> dict[str, t.Any]:
    response = await client.post("/notes", json={"text": text}, headers={"X-Tenant": tenant})
    assert response.status_code == 201, await response.get_data(as_text=True)
    return t.cast(dict[str, t.Any], await response.get_json())


async def texts(client: QuartClient, tenant: str) -> list[str]:
    response = await client.get("/notes", headers={"X-Tenant": tenant})
    assert response.status_code == 200
    return [note["text"] for note in await response.get_json()]


async def test_tenants_are_isolated(client: QuartClient, tmp_path: Path) -> None:
    """Each tenant sees only its own notes, stored in its own database file."""
    await add(client, "acme", "acme's note")
    await add(client, "globex", "globex's note")
    await add(client, "acme", "another acme note")
    assert await texts(client, "acme") == ["acme's note", "another acme note"]
    assert await texts(client, "globex") == ["globex's note"]
    assert await texts(client, "initech") == []
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "acme.db",
        "globex.db",
        "initech.db",
    ]


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "Send an X-Tenant header with a tenant id."),
        ({"X-Tenant": "../acme"}, "Send an X-Tenant header with a tenant id."),
        ({"X-Tenant": "Acme"}, "Send an X-Tenant header with a tenant id."),
        ({"X-Tenant": "a" * 40}, "Send an X-Tenant header with a tenant id."),
        ({"X-Tenant": "acme?host=127.0.0.1:5441"}, "Send an X-Tenant header with a tenant id."),
        ({"X-Tenant": "nobody"}, "There is no tenant 'nobody'."),
    ],
)
async def test_bad_tenants_are_rejected(
    app: Quart, client: QuartClient, headers: dict[str, str], error: str
) -> None:
    """A missing, malformed or unknown tenant gets a 400, and no engine is made for it."""
    for response in (
        await client.get("/notes", headers=headers),
        await client.post("/notes", json={"text": "x"}, headers=headers),
    ):
        assert response.status_code == 400
        assert await response.get_json() == {"error": error}
    assert registry_of(app).created == 0


async def test_bad_note_is_rejected(client: QuartClient) -> None:
    """A note without text gets a 400."""
    response = await client.post("/notes", json={"text": " "}, headers={"X-Tenant": "acme"})
    assert response.status_code == 400


async def test_engines_are_evicted_and_data_stays(app: Quart, client: QuartClient) -> None:
    """With room for two engines, five tenants take turns: engines come and go, notes stay."""
    registry = registry_of(app)
    for round_ in range(3):
        for tenant in TENANTS:
            await add(client, tenant, f"{tenant} {round_}")
            assert len(registry) <= 2
    assert (registry.created, registry.disposed) == (15, 13)
    for tenant in TENANTS:
        assert await texts(client, tenant) == [f"{tenant} {round_}" for round_ in range(3)]
    assert registry.keys() == TENANTS[-2:]


async def test_concurrent_requests_for_many_tenants(app: Quart, client: QuartClient) -> None:
    """Requests for all tenants at once, twice over: every tenant gets exactly its own notes."""
    jobs = [add(client, tenant, f"{tenant} {n}") for n in range(2) for tenant in TENANTS]
    await asyncio.gather(*jobs)
    for tenant in TENANTS:
        assert sorted(await texts(client, tenant)) == [f"{tenant} 0", f"{tenant} 1"]
    registry = registry_of(app)
    assert registry.reap() == 0 and len(registry) == 2


def test_tenant_ids_are_checked(tmp_path: Path) -> None:
    """A tenant id that could not be a file name is refused when the app is built."""
    with pytest.raises(ValueError, match="'../etc' is not a valid tenant id"):
        create_app(tmp_path, ["acme", "../etc"])
