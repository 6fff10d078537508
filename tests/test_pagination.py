"""paginate() through real requests (sync Flask, Flask async views, Quart; SQLite and
PostgreSQL), outside requests, and the Pagination object itself."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker
from werkzeug.exceptions import NotFound

from async_scoped_session_ext import async_scoped_session, flask_scoped_session
from async_scoped_session_ext.pagination import Pagination

from .support import sites
from .support.environment import needs_quart
from .support.models import Todo
from .support.sites import Author, Book, Site

site = sites.site


def titles(first: int, last: int) -> list[str]:
    return [f"t{n}" for n in range(first, last + 1)]


async def test_first_page_by_default(site: Site) -> None:
    """Without query arguments it is page 1 of 20 items, with the count and the neighbours."""
    await site.add_todos(45)
    page = await site.json("/page/default")
    assert page == {
        "items": titles(1, 20),
        "books": [],
        "page": 1,
        "per_page": 20,
        "total": 45,
        "pages": 3,
        "prev_num": None,
        "next_num": 2,
        "first": 1,
        "last": 20,
        "iter_pages": [1, 2, 3],
    }


async def test_page_and_per_page_come_from_the_query_string(site: Site) -> None:
    """page and per_page are read from the request's query arguments."""
    await site.add_todos(45)
    page = await site.json("/page/default?page=3&per_page=10")
    assert page["items"] == titles(21, 30)
    assert (page["page"], page["per_page"], page["pages"]) == (3, 10, 5)
    assert (page["prev_num"], page["next_num"], page["first"], page["last"]) == (2, 4, 21, 30)


async def test_last_page_is_partial(site: Site) -> None:
    """The last page holds what is left, and has no next page."""
    await site.add_todos(45)
    page = await site.json("/page/default?page=3")
    assert page["items"] == titles(41, 45)
    assert (page["first"], page["last"], page["next_num"]) == (41, 45, None)


async def test_max_per_page_caps_the_query_argument(site: Site) -> None:
    """max_per_page caps a per_page the client asked for."""
    await site.add_todos(45)
    page = await site.json("/page/capped?per_page=50")
    assert (page["per_page"], page["pages"], page["items"]) == (5, 9, titles(1, 5))


async def test_given_arguments_win_over_the_query_string(site: Site) -> None:
    """page and per_page given to paginate() are used, whatever the query string says."""
    await site.add_todos(45)
    page = await site.json("/page/given?page=5&per_page=50")
    assert (page["page"], page["per_page"], page["items"]) == (2, 3, titles(4, 6))


async def test_page_past_the_last_answers_404(site: Site) -> None:
    """With error_out, a page past the last answers 404 saying the page is empty."""
    await site.add_todos(45)
    status, body = await site.get("/page/default?page=4")
    assert status == 404
    assert "There are no items on page 4." in body


async def test_page_past_the_last_is_empty_without_error_out(site: Site) -> None:
    """Without error_out, a page past the last has no items, and the total still counts."""
    await site.add_todos(45)
    page = await site.json("/page/lenient?page=4")
    assert (page["items"], page["total"], page["first"], page["last"]) == ([], 45, 0, 0)
    assert (page["prev_num"], page["next_num"]) == (3, None)


async def test_first_page_of_nothing_is_no_error(site: Site) -> None:
    """Page 1 of an empty table answers 200 with no items and no pages."""
    page = await site.json("/page/default")
    assert (page["items"], page["total"], page["pages"], page["iter_pages"]) == ([], 0, 0, [])


INVALID = ["page=x", "page=0", "page=-2", "per_page=1.5", "per_page=0"]


@pytest.mark.parametrize("query", INVALID)
async def test_invalid_page_arguments_answer_404(site: Site, query: str) -> None:
    """With error_out, a page or per_page that is not a whole number >= 1 answers 404."""
    await site.add_todos(3)
    status, body = await site.get(f"/page/default?{query}")
    assert status == 404
    assert f"Invalid &#39;{query.split('=')[0]}&#39;" in body


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("page=x", (1, 20)),
        ("page=0", (1, 20)),
        ("page=-2", (1, 20)),
        ("page=2&per_page=1.5", (2, 20)),
        ("page=2&per_page=0", (2, 20)),
    ],
)
async def test_invalid_page_arguments_get_the_defaults(
    site: Site, query: str, expected: tuple[int, int]
) -> None:
    """Without error_out, an invalid page or per_page is replaced by 1 or 20."""
    await site.add_todos(25)
    page = await site.json(f"/page/lenient?{query}")
    assert (page["page"], page["per_page"]) == expected


async def test_count_false_leaves_the_total_unknown(site: Site) -> None:
    """count=False runs no count: total is None, pages 0, and there is no next page."""
    await site.add_todos(45)
    page = await site.json("/page/uncounted?page=2&per_page=10")
    assert page["items"] == titles(11, 20)
    assert (page["total"], page["pages"], page["prev_num"], page["next_num"]) == (None, 0, 1, None)


async def test_joined_eager_load_counts_and_pages_parents(site: Site) -> None:
    """A joined eager load of a collection gives unique parents per page, counted as parents."""
    for n in range(1, 4):
        await site.add(Author(id=n, name=f"a{n}", books=[Book(), Book()]))
    first = await site.json("/authors")
    assert (first["items"], first["books"], first["total"], first["pages"]) == (
        ["a1", "a2"],
        [2, 2],
        3,
        2,
    )
    second = await site.json("/authors?page=2")
    assert (second["items"], second["books"]) == (["a3"], [2])


def test_outside_a_request_the_defaults_apply(sync_engine: Engine) -> None:
    """In an app context without a request, page and per_page default to 1 and 20."""
    app = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    with app.app_context():
        scoped.add_all([Todo(id=n, title=f"t{n}") for n in range(1, 26)])
        scoped.flush()
        page = scoped.paginate(select(Todo).order_by(Todo.id))
        assert (page.page, page.per_page, page.total, page.items[-1].title) == (1, 20, 25, "t20")
        with pytest.raises(ValueError, match="max_per_page=0"):
            scoped.paginate(select(Todo), max_per_page=0)
        with pytest.raises(NotFound, match="Invalid 'page'"):
            scoped.paginate(select(Todo), page=0)
        assert scoped.paginate(select(Todo), page=-1, per_page=-1, error_out=False).page == 1
    with pytest.raises(RuntimeError, match="app context"):
        scoped.paginate(select(Todo))  # the usual error: no app context, no session


@needs_quart
async def test_quart_outside_a_request_and_in_a_websocket(async_engine: AsyncEngine) -> None:
    """In Quart, a pushed app context gets the defaults and a websocket its query arguments."""
    from quart import Quart

    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(async_engine), app)

    @app.websocket("/ws")
    async def ws() -> None:
        from quart import websocket

        page = await scoped.paginate(select(Todo.title).order_by(Todo.id))
        await websocket.send(" ".join(page.items))

    async with app.app_context():
        scoped.add_all([Todo(id=n, title=f"t{n}") for n in range(1, 26)])
        await scoped.commit()
        page = await scoped.paginate(select(Todo).order_by(Todo.id))
        assert (page.page, page.per_page, page.total) == (1, 20, 25)
    async with app.test_client().websocket("/ws?page=3&per_page=2") as socket:
        assert await socket.receive() == "t5 t6"


@pytest.mark.parametrize(
    ("pages", "page", "expected"),
    [
        (0, 1, []),
        (1, 1, [1]),
        (5, 3, [1, 2, 3, 4, 5]),
        (10, 1, [1, 2, 3, 4, 5, None, 9, 10]),
        (10, 5, list(range(1, 11))),
        (10, 10, [1, 2, None, 8, 9, 10]),
        (20, 7, [1, 2, None, 5, 6, 7, 8, 9, 10, 11, None, 19, 20]),
        (20, 20, [1, 2, None, 18, 19, 20]),
        (5, 9, [1, 2, None]),  # past the last page (error_out=False)
    ],
)
def test_iter_pages(pages: int, page: int, expected: list[int | None]) -> None:
    """iter_pages gives the edges and the pages around the current one, None for gaps."""
    pagination: Pagination[str] = Pagination([], page=page, per_page=10, total=pages * 10)
    assert list(pagination.iter_pages()) == expected


def test_iter_pages_with_other_widths() -> None:
    """iter_pages' four widths set how many pages each part shows."""
    pagination: Pagination[str] = Pagination([], page=10, per_page=1, total=20)
    assert list(
        pagination.iter_pages(left_edge=1, left_current=1, right_current=1, right_edge=0)
    ) == [1, None, 9, 10, 11, None]
    assert list(pagination.iter_pages(left_edge=0, left_current=0, right_current=0)) == [
        None,
        10,
        None,
        19,
        20,
    ]


def test_pagination_attributes() -> None:
    """Iterating gives the items; without a total there are no pages and no next page."""
    pagination = Pagination(["x", "y"], page=2, per_page=2, total=None, max_per_page=5)
    assert list(pagination) == ["x", "y"]
    assert (pagination.first, pagination.last, pagination.pages) == (3, 4, 0)
    assert (pagination.has_prev, pagination.prev_num, pagination.has_next) == (True, 1, False)
    assert repr(pagination) == "<Pagination page=2 per_page=2 total=None items=2>"
