"""One small app per framework and backend, with views on the 404 helpers and ``paginate()``.

``tests/test_pages.py`` and ``tests/test_pagination.py`` bind the ``site`` fixture
(``site = sites.site``): the same views, sync in a sync Flask app (pysqlite, psycopg) and
async in a Flask app with async views and in a Quart app (aiosqlite, asyncpg), so each
test runs through real requests on all six.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, ForeignKey, String, create_engine, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
    sessionmaker,
)

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session
from async_scoped_session_ext._runner import runner
from async_scoped_session_ext.pagination import Pagination

from .databases import database_url, engine_on_shared_loop
from .environment import HAS_QUART, needs_quart
from .models import Base, Todo

if HAS_QUART:
    from quart import Quart


class PagesBase(DeclarativeBase):
    pass


class Author(PagesBase):
    """An author with a collection of books: a joined eager load repeats the author's row."""

    __tablename__ = "asse_pages_author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(PagesBase):
    __tablename__ = "asse_pages_book"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey(Author.id))
    author: Mapped[Author] = relationship(back_populates="books")


#: The ``paginate()`` options of the view ``/page/<name>``.
OPTIONS: dict[str, dict[str, t.Any]] = {
    "default": {},
    "lenient": {"error_out": False},
    "uncounted": {"count": False},
    "capped": {"max_per_page": 5},
    "given": {"page": 2, "per_page": 3},
}

#: ``one_or_404`` on a title: the description of its 404.
NO_SUCH_TITLE = "No single todo has that title."


def described(ident: int) -> str:
    """The description of ``/todos/<ident>``'s 404."""
    return f"There is no todo {ident}."


def as_json(page: Pagination[t.Any]) -> dict[str, object]:
    """What the views answer for a page: its attributes, and its items' titles or names."""
    return {
        "items": [item.title if isinstance(item, Todo) else item.name for item in page.items],
        "books": [len(item.books) for item in page.items if isinstance(item, Author)],
        "page": page.page,
        "per_page": page.per_page,
        "total": page.total,
        "pages": page.pages,
        "prev_num": page.prev_num,
        "next_num": page.next_num,
        "first": page.first,
        "last": page.last,
        "iter_pages": list(page.iter_pages()),
    }


by_title = select(Todo).order_by(Todo.id)
authors_with_books = select(Author).options(joinedload(Author.books)).order_by(Author.id)


def add_sync_views(app: Flask, scoped: flask_scoped_session[Session]) -> None:
    """The views, on a sync scoped session."""

    @app.get("/todos/<int:ident>")
    def get_todo(ident: int) -> str:
        # Through current_session, as an app would: it forwards to the scoped session.
        todo: Todo = current_session.get_or_404(Todo, ident, description=described(ident))
        return todo.title

    @app.get("/first/<title>")
    def first_todo(title: str) -> str:
        return str(scoped.first_or_404(by_title.where(Todo.title == title)).id)

    @app.get("/one/<title>")
    def one_todo(title: str) -> str:
        statement = select(Todo.id).where(Todo.title == title)
        return str(scoped.one_or_404(statement, description=NO_SUCH_TITLE))

    @app.get("/page/<name>")
    def page(name: str) -> dict[str, object]:
        return as_json(scoped.paginate(by_title, **OPTIONS[name]))

    @app.get("/authors")
    def authors() -> dict[str, object]:
        return as_json(scoped.paginate(authors_with_books, per_page=2))


def add_async_views(app: Flask | Quart, scoped: async_scoped_session[AsyncSession]) -> None:
    """The views, on an async scoped session: awaited, as in Quart and Flask async views."""

    @app.get("/todos/<int:ident>")
    async def get_todo(ident: int) -> str:
        todo: Todo = await current_session.get_or_404(Todo, ident, description=described(ident))
        return todo.title

    @app.get("/first/<title>")
    async def first_todo(title: str) -> str:
        return str((await scoped.first_or_404(by_title.where(Todo.title == title))).id)

    @app.get("/one/<title>")
    async def one_todo(title: str) -> str:
        statement = select(Todo.id).where(Todo.title == title)
        return str(await scoped.one_or_404(statement, description=NO_SUCH_TITLE))

    @app.get("/page/<name>")
    async def page(name: str) -> dict[str, object]:
        return as_json(await scoped.paginate(by_title, **OPTIONS[name]))

    @app.get("/authors")
    async def authors() -> dict[str, object]:
        return as_json(await scoped.paginate(authors_with_books, per_page=2))


@dataclass
class Site:
    """An app with the views, its engine, and a way to request a path."""

    kind: str
    app: Flask | Quart
    engine: Engine | AsyncEngine
    scoped: flask_scoped_session[Session] | async_scoped_session[AsyncSession]

    async def get(self, path: str) -> tuple[int, str]:
        """The status and body of ``GET path``, through the app's test client."""
        if self.kind == "quart":
            response = await t.cast("Quart", self.app).test_client().get(path)
            return response.status_code, await response.get_data(as_text=True)
        flask_response = t.cast(Flask, self.app).test_client().get(path)
        return flask_response.status_code, flask_response.get_data(as_text=True)

    async def json(self, path: str) -> dict[str, t.Any]:
        """The JSON body of ``GET path``, which must answer 200."""
        import json

        status, body = await self.get(path)
        assert status == 200, body
        return t.cast(dict[str, t.Any], json.loads(body))

    async def add(self, *rows: object) -> None:
        """Commit *rows* (models) in a session of their own."""
        if isinstance(self.engine, Engine):
            with Session(self.engine) as session:
                session.add_all(rows)
                session.commit()
            return

        async def commit() -> None:
            async with AsyncSession(t.cast(AsyncEngine, self.engine)) as session:
                session.add_all(rows)
                await session.commit()

        if self.kind == "flask_async":  # the engine's connections live on the shared loop
            runner.run(commit())
        else:
            await commit()

    async def add_todos(self, count: int) -> None:
        """Commit *count* todos titled ``t1`` to ``t<count>``, in id order."""
        await self.add(*[Todo(id=n, title=f"t{n}") for n in range(1, count + 1)])


async def _reset(engine: AsyncEngine, drop_only: bool = False) -> None:
    async with engine.begin() as conn:
        for metadata in (Base.metadata, PagesBase.metadata):
            await conn.run_sync(metadata.drop_all)
            if not drop_only:
                await conn.run_sync(metadata.create_all)


SITES = [
    "flask-sqlite",
    "flask-postgresql",
    "flask_async-aiosqlite",
    "flask_async-asyncpg",
    pytest.param("quart-aiosqlite", marks=needs_quart),
    pytest.param("quart-asyncpg", marks=needs_quart),
]


@pytest.fixture(params=SITES)
async def site(request: pytest.FixtureRequest, tmp_path: Path) -> cabc.AsyncIterator[Site]:
    """An app with the views, on fresh tables; afterwards no connection may be checked out."""
    kind, backend = t.cast(str, request.param).split("-")
    url = database_url(backend, tmp_path)
    if kind == "flask":
        engine = create_engine(url)
        for metadata in (Base.metadata, PagesBase.metadata):
            metadata.drop_all(engine)
            metadata.create_all(engine)
        app = Flask(__name__)
        app.testing = True
        scoped = flask_scoped_session(sessionmaker(engine), app)
        add_sync_views(app, scoped)
        try:
            yield Site(kind, app, engine, scoped)
            assert engine.pool.checkedout() == 0, "a connection was left checked out"  # type: ignore[attr-defined]
        finally:
            for metadata in (Base.metadata, PagesBase.metadata):
                metadata.drop_all(engine)
            engine.dispose()
    elif kind == "flask_async":
        with engine_on_shared_loop(url) as async_engine:
            runner.run(_reset(async_engine))
            app = Flask(__name__)
            app.testing = True
            ascoped = async_scoped_session(async_sessionmaker(async_engine), app)
            add_async_views(app, ascoped)
            try:
                yield Site(kind, app, async_engine, ascoped)
            finally:
                runner.run(_reset(async_engine, drop_only=True))
    else:
        async_engine = create_async_engine(url)
        await _reset(async_engine)
        quart = Quart(__name__)
        quart.testing = True
        ascoped = async_scoped_session(async_sessionmaker(async_engine), quart)
        add_async_views(quart, ascoped)
        try:
            yield Site(kind, quart, async_engine, ascoped)
            assert async_engine.pool.checkedout() == 0, "a connection was left checked out"  # type: ignore[attr-defined]
        finally:
            await _reset(async_engine, drop_only=True)
            await async_engine.dispose()
