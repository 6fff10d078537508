"""PostgreSQL seen from the parent: whether it answers, the app's backends, the run's table.

The parent looks through an engine of its own (``NullPool``, an ``application_name`` of its
own), so that its connections are never counted among the app's backends.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from .plan import DatabaseUnavailable, shown_url

STATS_TIMEOUT = 10.0  # seconds for one /stats or pg_stat_activity look-up
SHUTDOWN_BACKENDS_TIMEOUT = 5.0  # seconds for the app's backends to go after the server stops


class Database:
    """The run's view of PostgreSQL: the app's backends (by *application_name*), its *table*."""

    def __init__(self, url: str, application_name: str, table: str) -> None:
        self.url = url
        self.application_name = application_name
        self.table = table
        self.engine = create_async_engine(
            url,
            poolclass=NullPool,
            connect_args={
                "timeout": 5,
                "server_settings": {"application_name": f"{application_name}-monitor"},
            },
        )

    async def check(self) -> None:
        """Raise :class:`DatabaseUnavailable` unless PostgreSQL answers."""
        try:
            async with asyncio.timeout(STATS_TIMEOUT), self.engine.connect() as conn:
                await conn.execute(text("select 1"))
        except (OSError, SQLAlchemyError, TimeoutError) as error:
            raise DatabaseUnavailable(
                f"PostgreSQL at {shown_url(self.url)} does not answer: {error}"
            ) from error

    async def backend_states(self) -> dict[str, int]:
        """The server's PostgreSQL backends (by application_name), counted by state."""
        async with asyncio.timeout(STATS_TIMEOUT), self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "select coalesce(state, 'unknown'), count(*) from pg_stat_activity"
                    " where application_name = :name group by 1"
                ),
                {"name": self.application_name},
            )
            return {str(state): int(count) for state, count in rows}

    async def backends_after_shutdown(self) -> int:
        """The app's backends left once the server stopped (waiting a bound for them to go)."""
        deadline = time.monotonic() + SHUTDOWN_BACKENDS_TIMEOUT
        while True:
            left = sum((await self.backend_states()).values())
            if left == 0 or time.monotonic() >= deadline:
                return left
            await asyncio.sleep(0.25)

    async def table_rows(self) -> list[tuple[int, bool]]:
        """The rows the run's table shows: each one's request and whether it meant to commit."""
        async with asyncio.timeout(STATS_TIMEOUT), self.engine.connect() as conn:
            rows = await conn.execute(text(f'select req, committed from "{self.table}"'))
            return [(int(req), bool(committed)) for req, committed in rows]

    async def drop_table_if_left(self) -> bool:
        """Drop the table if the server did not; return whether it was still there."""
        async with asyncio.timeout(STATS_TIMEOUT), self.engine.begin() as conn:
            left = await conn.scalar(text("select to_regclass(:name)"), {"name": self.table})
            if left is not None:
                await conn.execute(text("set local lock_timeout = '5s'"))
                await conn.execute(text(f'drop table if exists "{self.table}"'))
            return left is not None

    async def dispose(self) -> None:
        """Close the parent's engine."""
        await self.engine.dispose()
