"""A multi-tenant notes API on Quart: the ``X-Tenant`` header picks each request's database.

Every tenant has its own SQLite file (aiosqlite) in the data directory, whose URL a
:class:`~async_scoped_session_ext.tenants.TenantURLs` makes from the tenant id: the id can
change the file's name only, never its directory. An
:class:`~async_scoped_session_ext.EngineRegistry` makes each tenant's engine on first use,
keeps at most ``max_engines`` of them, and disposes the least recently used one when
another is needed (once its requests are done). The tenant's tables are created on its first
request in the process. Engines are disposed when the app stops serving.

Routes: ``GET /notes`` and ``POST /notes`` (JSON ``{"text": ...}``), each with an
``X-Tenant`` header naming a known tenant; a missing, malformed or unknown tenant gets a
400 response. Serve it from the repository root with::

    TENANTS=acme,globex python -m examples.tenants.app    # files in ./tenants_data
    curl -H 'X-Tenant: acme' -H 'Content-Type: application/json' \\
        -d '{"text": "hello"}' http://127.0.0.1:5000/notes
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import os
import re
import typing as t
from pathlib import Path

from quart import Quart, abort, g, request
from sqlalchemy import URL, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.exceptions import HTTPException

from async_scoped_session_ext import EngineRegistry, async_scoped_session
from async_scoped_session_ext.tenants import TenantURLs

TENANT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
"""What a tenant id looks like (narrower than TenantURLs' default): it names a file."""

NoteJSON = dict[str, int | str]


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(500))

    def to_json(self) -> NoteJSON:
        return {"id": self.id, "text": self.text}


def create_app(
    data_dir: str | os.PathLike[str], tenants: cabc.Iterable[str], *, max_engines: int = 8
) -> Quart:
    """Build the app for *tenants*, each with a database file in *data_dir*."""
    data = Path(data_dir)
    known = frozenset(tenants)
    # The template is built as a URL, not a string: the directory's name is taken as is.
    # TenantURLs refuses ids that do not match TENANT_NAME, or that would name a path.
    urls = TenantURLs(
        URL.create("sqlite+aiosqlite", database=str(data / "{key}.db")), pattern=TENANT_NAME
    )
    for tenant in known:
        if not urls.is_valid(tenant):
            raise ValueError(f"{tenant!r} is not a valid tenant id ({TENANT_NAME.pattern}).")
    app = Quart(__name__)
    # expire_on_commit=False: reading a committed object must not lazy-load (no implicit
    # I/O in async code). The registry disposes its engines after serving.
    registry = EngineRegistry(
        urls,
        is_async=True,
        max_engines=max_engines,
        session_options={"expire_on_commit": False},
        app=app,
    )
    app.extensions["tenant_registry"] = registry
    ready: set[str] = set()  # tenants whose tables exist
    creating = asyncio.Lock()

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> tuple[dict[str, str], int]:
        return {"error": error.description or error.name}, error.code or 500

    @app.before_request
    async def pick_tenant() -> None:
        tenant = request.headers.get("X-Tenant", "")
        if not urls.is_valid(tenant):  # the registry would raise InvalidTenantKey
            abort(400, "Send an X-Tenant header with a tenant id.")
        if tenant not in known:
            abort(400, f"There is no tenant {tenant!r}.")
        g.tenant = tenant
        if tenant not in ready:
            async with creating:
                if tenant not in ready:
                    connection = await session().connection()
                    await connection.run_sync(Base.metadata.create_all)
                    await session().commit()
                    ready.add(tenant)

    @app.get("/notes")
    async def list_notes() -> list[NoteJSON]:
        notes = await session().scalars(select(Note).order_by(Note.id))
        return [note.to_json() for note in notes]

    @app.post("/notes")
    async def add_note() -> tuple[NoteJSON, int]:
        data = await request.get_json(silent=True)
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not 0 < len(text.strip()) <= 500:
            abort(400, 'Send JSON {"text": "..."} with a text of 1 to 500 characters.')
        note = Note(text=text.strip())
        session().add(note)
        await session().commit()
        return note.to_json(), 201

    return app


def session() -> async_scoped_session[AsyncSession]:
    """The current request's tenant's scoped session."""
    return t.cast("async_scoped_session[AsyncSession]", registry_of()[g.tenant])


def registry_of(app: Quart | None = None) -> EngineRegistry:
    """The app's tenant registry (the current app's by default)."""
    from quart import current_app

    return t.cast(EngineRegistry, (app or current_app).extensions["tenant_registry"])


if __name__ == "__main__":
    names = os.environ.get("TENANTS", "acme,globex").split(",")
    data_dir = Path(os.environ.get("TENANTS_DATA_DIR", "tenants_data"))
    data_dir.mkdir(exist_ok=True)
    create_app(data_dir, names).run(host="127.0.0.1", port=5000, use_reloader=False)
