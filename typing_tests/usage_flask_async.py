"""Flask async views on the shared loop, and ``asession.run(...)`` from a CLI command."""

from __future__ import annotations

from typing import assert_type

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session

from .models import User


async def count_users() -> int:
    return await current_session.scalar(select(func.count()).select_from(User)) or 0


def create_app() -> Flask:
    """The README's Flask async app, with a sync session beside the async one."""
    engine = create_async_engine("postgresql+asyncpg://app@127.0.0.1/app")
    app = Flask(__name__)
    asession = async_scoped_session(
        async_sessionmaker(engine, expire_on_commit=False), app, close_timeout=5.0
    )
    sync = flask_scoped_session(sessionmaker(), app, name="reports")
    assert_type(sync, flask_scoped_session[Session])

    @app.get("/users")
    async def list_users() -> list[dict[str, object]]:
        users = await current_session.scalars(select(User).order_by(User.id))
        return [{"id": user.id, "name": user.name} for user in users]

    @app.cli.command("count-users")
    def count_users_command() -> None:
        count = asession.run(count_users())
        assert_type(count, int)
        print(count)

    @app.cli.command("names")
    def names_command() -> None:
        async def names() -> list[str]:
            return list(await asession.scalars(select(User.name)))

        assert_type(asession.run(names()), list[str])
        asession.run(names)  # type: ignore[arg-type]  # the coroutine, not the function

    return app


def opt_out() -> Flask:
    """``shared_loop=False``: asgiref's loop per view, a session opened in each view."""
    engine = create_async_engine("postgresql+asyncpg://app@127.0.0.1/app")
    factory = async_sessionmaker(engine)
    app = Flask(__name__)
    async_scoped_session(factory, app, shared_loop=False)

    @app.get("/count")
    async def count() -> dict[str, int]:
        async with factory() as session:
            assert_type(session, AsyncSession)
            return {"count": await session.scalar(select(func.count(User.id))) or 0}

    return app


def mixed_up() -> None:
    """Handing a factory of the other kind is a type error, as it is a ``TypeError``."""
    sync_factory = sessionmaker()
    async_factory = async_sessionmaker()
    async_scoped_session(sync_factory)  # type: ignore[arg-type]
    flask_scoped_session(async_factory)  # type: ignore[type-var]
