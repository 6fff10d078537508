"""The 404 helpers and ``paginate()``: exact types on the scoped sessions, sync and async."""

from __future__ import annotations

import typing as t
from typing import assert_type

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session
from async_scoped_session_ext.pagination import Pagination

from .models import User


def sync_types(scoped: flask_scoped_session[Session]) -> None:
    """Sync: the helpers return the row's type, ``paginate`` a ``Pagination`` of it."""
    assert_type(scoped.get_or_404(User, 1), User)
    assert_type(scoped.get_or_404(User, 1, description="No such user."), User)
    assert_type(scoped.first_or_404(select(User)), User)
    assert_type(scoped.one_or_404(select(User.name).where(User.id == 1)), str)
    page = scoped.paginate(select(User).order_by(User.id), per_page=10, max_per_page=50)
    assert_type(page, Pagination[User])
    assert_type(page.items, list[User])
    assert_type(page.total, int | None)
    assert_type(page.next_num, int | None)
    assert_type(list(page.iter_pages()), list[int | None])
    for user in page:
        assert_type(user, User)
    assert_type(scoped.paginate(select(User.id, User.name)), Pagination[t.Any])
    scoped.paginate(select(User), page="2")  # type: ignore[call-overload]


async def async_types(scoped: async_scoped_session[AsyncSession]) -> None:
    """Async: the same types, once awaited."""
    assert_type(await scoped.get_or_404(User, 1), User)
    assert_type(await scoped.first_or_404(select(User)), User)
    assert_type(await scoped.one_or_404(select(User.name)), str)
    page = await scoped.paginate(select(User), page=2, error_out=False, count=False)
    assert_type(page, Pagination[User])
    assert_type(page.prev_num, int | None)
    _ = scoped.get_or_404(User, 1).id  # type: ignore[attr-defined]


async def through_current_session() -> None:
    """``current_session`` has them too, typed ``Any`` as its other attributes."""
    page = await current_session.paginate(select(User))
    assert_type(page, t.Any)
