"""What differs between the supported SQLAlchemy versions, and between pool classes."""

from __future__ import annotations

import inspect
import typing as t
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_scoped_session as sa_async_scoped_session
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, Pool, QueuePool, StaticPool

from async_scoped_session_ext import EngineRegistry, async_scoped_session, flask_scoped_session
from async_scoped_session_ext._guard import GUARDED_METHODS


def test_every_awaitable_proxy_is_guarded() -> None:
    """Each awaitable method this SQLAlchemy proxies claims the session, and no other one."""
    awaitable = {
        name
        for name, member in vars(sa_async_scoped_session).items()
        if inspect.iscoroutinefunction(member) and name != "remove"  # remove() is not proxied
    }
    assert set(GUARDED_METHODS) == awaitable
    for name in GUARDED_METHODS:
        assert vars(async_scoped_session)[name].__wrapped__ is vars(sa_async_scoped_session)[name]


@pytest.mark.parametrize("poolclass", [QueuePool, NullPool, StaticPool])
def test_registry_defers_disposal_with_any_pool(poolclass: type[Pool], tmp_path: Path) -> None:
    """A connection checked out of an evicted engine defers its disposal, whatever the pool.

    ``NullPool`` (SQLAlchemy < 2.0.38's default for aiosqlite files) and ``StaticPool`` do
    not count their checkouts themselves.
    """
    registry = EngineRegistry(
        lambda key: f"sqlite:///{tmp_path / key}.db",
        max_engines=1,
        engine_options={"poolclass": poolclass},
    )
    scoped = t.cast("flask_scoped_session[Session]", registry["t0"])
    try:
        with scoped.fresh() as session:
            session.execute(text("select 1"))
            registry["t1"]  # evicts t0 while its connection is checked out
            assert (registry.disposed, registry.reap()) == (0, 1)
            assert session.execute(text("select 2")).scalar_one() == 2
        assert registry.reap() == 0
        assert registry.disposed == 1
    finally:
        registry.close()
