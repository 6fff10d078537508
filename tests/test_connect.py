"""Opening async connections outside the caller's context (``_connect``) keeps SQLAlchemy's
``do_connect`` contract: listeners run in order, and the first connection one of them
returns is the one used."""

from __future__ import annotations

import contextvars
import typing as t
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine

from async_scoped_session_ext._connect import _connect_in_empty_context, connect_outside_context

caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller")


async def test_a_later_listener_returning_a_connection_is_used_as_it_is(tmp_path: Path) -> None:
    """A ``do_connect`` listener added after the library's that opens the connection itself
    (here to another database file) decides the connection, as SQLAlchemy promises: the
    library calls it in the caller's context and uses its connection as it is, and the
    listeners after it are not called, as SQLAlchemy would not call them."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'configured.db'}")
    connect_outside_context(engine)
    chosen = tmp_path / "chosen.db"
    seen: list[str | None] = []
    later: list[object] = []

    @event.listens_for(engine.sync_engine, "do_connect")
    def open_another_database(
        dialect: t.Any, record: object, cargs: list[t.Any], cparams: dict[str, t.Any]
    ) -> t.Any:
        seen.append(caller.get(None))
        return dialect.connect(str(chosen), **cparams)

    @event.listens_for(engine.sync_engine, "do_connect")
    def never_reached(*args: object) -> None:
        later.append(args)

    listeners = list(engine.sync_engine.dialect.dispatch.do_connect)
    assert listeners == [_connect_in_empty_context, open_another_database, never_reached]
    token = caller.set("the caller's context")
    try:
        async with engine.connect() as conn:
            databases = (await conn.execute(text("pragma database_list"))).all()
    finally:
        caller.reset(token)
        await engine.dispose()
    assert [row[2] for row in databases] == [str(chosen)]
    assert seen == ["the caller's context"]
    assert later == []
