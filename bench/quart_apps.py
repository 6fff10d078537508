"""Quart apps that run the same query three ways: ours, an ``AsyncSession`` by hand, none.

Every app has one view, ``GET /item``, that returns the item's name (the floor returns it
without asking the database). Engines are made by the builder and must be disposed on the
event loop that used them: :attr:`QuartApp.engines`.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

from quart import Quart
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from async_scoped_session_ext import async_scoped_session, current_session

from .db import ITEM_NAME, Databases
from .measure import FLOOR, HAND, OURS

PATH = "/item"
BODY = ITEM_NAME.encode()


class QuartApp(t.NamedTuple):
    app: Quart
    engines: list[AsyncEngine]


def floor_app(dbs: Databases, url: str) -> QuartApp:
    """No database at all: what Quart itself costs."""
    app = Quart("bench_quart_floor")

    @app.get(PATH)
    async def item() -> str:
        return ITEM_NAME

    return QuartApp(app, [])


def ours_app(dbs: Databases, url: str) -> QuartApp:
    """``async_scoped_session`` and ``await current_session.execute(...)`` in the view."""
    app = Quart("bench_quart_ours")
    engine = create_async_engine(url)
    async_scoped_session(async_sessionmaker(engine), app)
    query = dbs.query

    @app.get(PATH)
    async def item() -> str:
        result = await current_session.execute(query)
        return str(result.scalar_one())

    return QuartApp(app, [engine])


def hand_app(dbs: Databases, url: str) -> QuartApp:
    """An ``AsyncSession`` opened and closed in the view by hand."""
    app = Quart("bench_quart_hand")
    engine = create_async_engine(url)
    factory = async_sessionmaker(engine)
    query = dbs.query

    @app.get(PATH)
    async def item() -> str:
        async with factory() as session:
            result = await session.execute(query)
            return str(result.scalar_one())

    return QuartApp(app, [engine])


BUILDERS: dict[str, cabc.Callable[[Databases, str], QuartApp]] = {
    OURS: ours_app,
    HAND: hand_app,
    FLOOR: floor_app,
}
