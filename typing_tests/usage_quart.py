"""A Quart app: ``async_scoped_session``, ``await current_session...`` and ``fresh()``."""

from __future__ import annotations

import asyncio
import typing as t
from collections.abc import Sequence
from typing import assert_type

from quart import Quart
from sqlalchemy import Result, ScalarResult, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from async_scoped_session_ext import async_scoped_session, current_session

from .models import Note, User


def create_app() -> Quart:
    """The README's Quart app, plus child tasks with sessions of their own."""
    engine = create_async_engine("sqlite+aiosqlite://")
    app = Quart(__name__)
    asession = async_scoped_session(async_sessionmaker(engine, expire_on_commit=False), app)
    assert_type(asession, async_scoped_session[AsyncSession])

    @app.after_serving
    async def dispose_engine() -> None:
        await engine.dispose()

    @app.get("/users")
    async def list_users() -> list[dict[str, object]]:
        users = await current_session.scalars(select(User).order_by(User.id))
        return [{"id": user.id, "name": user.name} for user in users]

    @app.post("/users")
    async def add_user() -> tuple[dict[str, object], int]:
        user = User(name="ada")
        current_session.add(user)  # no I/O: not awaited, in both modes
        await current_session.commit()
        return {"id": user.id}, 201

    @app.get("/users/<int:user_id>/notes")
    async def notes(user_id: int) -> list[str]:
        async def texts() -> list[str]:
            async with asession.fresh() as own:  # a concurrent task's own session
                assert_type(own, AsyncSession)
                found = await own.scalars(select(Note.text).where(Note.user_id == user_id))
                return list(found)

        async def name() -> str | None:
            async with asession.fresh() as own:
                return await own.scalar(select(User.name).where(User.id == user_id))

        listed, _ = await asyncio.gather(texts(), name())
        assert_type(listed, list[str])
        return listed

    return app


async def scoped_session_types(asession: async_scoped_session[AsyncSession]) -> None:
    """The scoped session object keeps SQLAlchemy's exact types."""
    assert_type(asession(), AsyncSession)
    assert_type(await asession.execute(select(User.id, User.name)), Result[int, str])
    assert_type(await asession.scalars(select(User)), ScalarResult[User])
    assert_type((await asession.scalars(select(User))).all(), Sequence[User])
    assert_type(await asession.get(User, 1), User | None)
    assert_type(await asession.scalar(select(User.id).where(User.name == "ada")), int | None)
    assert_type(await asession.remove(), None)
    assert_type(asession.close_timeout, float)
    assert_type(asession.shared_loop, bool)
    assert_type(asession.session_factory, async_sessionmaker[AsyncSession])


async def current_session_types(user: User) -> None:
    """``await current_session.x(...)`` is typed loosely but checks its arguments."""
    result = await current_session.execute(select(User))
    assert_type(result, t.Any)
    await current_session.get(User, 1)
    await current_session.flush([user])
    await current_session.refresh(user, ["name"])
    await current_session.delete(user)
    await current_session.rollback()
    session: AsyncSession = current_session()
    assert_type(session, AsyncSession)
    # add() never does I/O: awaiting it is a bug that must not type-check.
    await current_session.add(user)  # type: ignore[func-returns-value, misc]
    await current_session.execute(select(User), {"id": 1}, bind_args={})  # type: ignore[call-arg]


def custom_session_class() -> None:
    """A subclass of ``AsyncSession`` flows through to the scoped session's type."""

    class TenantSession(AsyncSession):
        tenant: str = ""

    engine = create_async_engine("sqlite+aiosqlite://")
    scoped = async_scoped_session(async_sessionmaker(engine, class_=TenantSession))
    assert_type(scoped, async_scoped_session[TenantSession])
    assert_type(scoped().tenant, str)
