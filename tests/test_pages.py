"""get_or_404, first_or_404 and one_or_404 through real requests: sync Flask, Flask async
views and Quart, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker
from werkzeug.exceptions import NotFound

from async_scoped_session_ext import flask_scoped_session

from .support import sites
from .support.models import Todo
from .support.sites import NO_SUCH_TITLE, Site, described

site = sites.site

#: werkzeug's text for a 404 without a description of its own.
DEFAULT_DESCRIPTION = "The requested URL was not found on the server."


async def test_get_or_404_finds_the_row(site: Site) -> None:
    """get_or_404 returns the row with that primary key."""
    await site.add_todos(2)
    assert await site.get("/todos/2") == (200, "t2")


async def test_get_or_404_answers_404_with_the_description(site: Site) -> None:
    """get_or_404 for a missing key answers 404 with the given description."""
    await site.add_todos(2)
    status, body = await site.get("/todos/3")
    assert status == 404
    assert described(3) in body


async def test_first_or_404_returns_the_first_row(site: Site) -> None:
    """first_or_404 returns the first of several matching rows."""
    await site.add(Todo(id=1, title="a"), Todo(id=2, title="b"), Todo(id=3, title="b"))
    assert await site.get("/first/b") == (200, "2")


async def test_first_or_404_without_a_row_answers_404(site: Site) -> None:
    """first_or_404 with no matching row answers 404 with werkzeug's own description."""
    await site.add_todos(1)
    status, body = await site.get("/first/missing")
    assert status == 404
    assert DEFAULT_DESCRIPTION in body


async def test_one_or_404_returns_the_only_row(site: Site) -> None:
    """one_or_404 returns the value of the only matching row."""
    await site.add(Todo(id=1, title="a"), Todo(id=2, title="b"))
    assert await site.get("/one/b") == (200, "2")


@pytest.mark.parametrize("titles", [["a"], ["a", "b", "b"]], ids=["none", "several"])
async def test_one_or_404_answers_404_for_none_or_several(site: Site, titles: list[str]) -> None:
    """one_or_404 answers 404 with the description when no row, or more than one, matches."""
    await site.add(*[Todo(id=n, title=title) for n, title in enumerate(titles, 1)])
    status, body = await site.get("/one/b")
    assert status == 404
    assert NO_SUCH_TITLE in body


def test_helpers_outside_a_request_raise_not_found(sync_engine: Engine) -> None:
    """Outside a request the helpers raise werkzeug's NotFound, with the given description."""
    app = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    with app.app_context():
        scoped.add(Todo(id=1, title="a"))
        scoped.flush()
        assert scoped.get_or_404(Todo, 1).title == "a"
        with pytest.raises(NotFound) as missing:
            scoped.get_or_404(Todo, 2, description="gone")
        assert missing.value.description == "gone"
        with pytest.raises(NotFound):
            scoped.first_or_404(select(Todo).where(Todo.id == 2))
        assert scoped.one_or_404(select(Todo.title)) == "a"
