"""SQLAlchemy's asyncio extension, importable by a sync-only install (no greenlet).

``sqlalchemy.ext.asyncio`` needs greenlet, which a sync-only install does not have:
SQLAlchemy 2.1 installs it only with its ``asyncio`` extra (our async extras pull that in).
Without greenlet, SQLAlchemy 2.1 raises ``ImportError`` on the first import of the
extension only, and imports it from then on; async code then fails when it first needs
greenlet (opening a connection), with SQLAlchemy's ``ImportError`` naming the install
target. SQLAlchemy 2.0 imports it without greenlet, and fails the same way on use.

The modules a sync app loads take the async names from here, so importing the package,
running sync sessions and testing them never needs greenlet; the names are SQLAlchemy's
own, the same objects the async modules import directly.
"""

from __future__ import annotations

import importlib.util

try:
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncEngine,
        AsyncSession,
        AsyncTransaction,
        async_sessionmaker,
        create_async_engine,
    )
except ImportError:
    if importlib.util.find_spec("greenlet") is not None:
        raise  # another problem: not ours to hide
    # SQLAlchemy marked greenlet as missing; the second import succeeds.
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncEngine,
        AsyncSession,
        AsyncTransaction,
        async_sessionmaker,
        create_async_engine,
    )

__all__ = [
    "AsyncConnection",
    "AsyncEngine",
    "AsyncSession",
    "AsyncTransaction",
    "async_sessionmaker",
    "create_async_engine",
]
