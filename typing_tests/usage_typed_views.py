"""The typed path: ``current_sync_session`` / ``current_async_session`` give exact types
where ``current_session`` gives ``Any`` for I/O; a typo on a fetched model is an error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import assert_type

from sqlalchemy import ScalarResult, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from async_scoped_session_ext import (
    async_scoped_session,
    current_async_session,
    current_sync_session,
    flask_scoped_session,
)

from .models import Note, User

assert_type(current_sync_session, flask_scoped_session[Session])
assert_type(current_async_session, async_scoped_session[AsyncSession])


def sync_view(user_id: int) -> str:
    """A sync Flask view: every result exactly typed."""
    user = current_sync_session.get(User, user_id)
    assert_type(user, User | None)
    if user is None:
        return ""
    print(user.nmae)  # type: ignore[attr-defined]  # a typo is an error, not Any
    names = current_sync_session.scalars(select(User.name))
    assert_type(names, ScalarResult[str])
    for row_id, text in current_sync_session.execute(select(User.id, Note.text).join(Note)):
        assert_type(row_id, int)
        assert_type(text, str)
    assert_type(current_sync_session(), Session)
    return user.name


async def async_view(user_id: int) -> str:
    """A Quart or Flask async view: every awaited result exactly typed."""
    user = await current_async_session.get(User, user_id)
    assert_type(user, User | None)
    if user is None:
        return ""
    print(user.nmae)  # type: ignore[attr-defined]  # a typo is an error, not Any
    notes = (await current_async_session.scalars(select(Note))).all()
    assert_type(notes, Sequence[Note])
    count = await current_async_session.scalar(select(User.id).limit(1))
    assert_type(count, int | None)
    assert_type(current_async_session(), AsyncSession)
    current_async_session.add(User(name="ada"))
    await current_async_session.commit()
    return user.name
