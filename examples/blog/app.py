"""A blog JSON API on sync Flask, migrated from Flask-SQLAlchemy 3.1 (``fsa_app.py``).

Two models with a relationship, ``get_or_404`` / ``one_or_404`` / ``first_or_404``,
``paginate``, ``Model.query``, recorded queries and the ``models_committed`` signal: each
has the same name here, so the migration changes imports and set-up, not views
(docs/migrating.md). ``tests/test_blog_example.py`` checks both answer alike. Serve it with::

    flask --app "examples.blog.app:create_app('sqlite:///blog.db')" run
"""

from __future__ import annotations

import typing as t

from flask import Flask, request
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    QueryPropertyDescriptor,
    mapped_column,
    relationship,
)

from async_scoped_session_ext import current_sync_session as db_session
from async_scoped_session_ext import flask_scoped_session
from async_scoped_session_ext.record_queries import get_recorded_queries
from async_scoped_session_ext.signals import models_committed


class Base(DeclarativeBase):
    query: t.ClassVar[QueryPropertyDescriptor]  # Author.query, set below


session = flask_scoped_session(metadata=Base)  # the engine comes from each app's config
Base.query = session.query_property()


class Author(Base):
    __tablename__ = "author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    posts: Mapped[list[Post]] = relationship(back_populates="author", order_by="Post.id")


class Post(Base):
    __tablename__ = "post"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship(back_populates="posts")


def post_json(post: Post) -> dict[str, t.Any]:
    return {"id": post.id, "title": post.title, "author": post.author.name}


def create_app(database_url: str) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": database_url}
    app.config["SQLALCHEMY_RECORD_QUERIES"] = True
    app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = True
    session.init_app(app)
    Base.metadata.create_all(session.get_engine(app))
    committed: list[str] = []

    def remember(sender: Flask, changes: list[tuple[t.Any, str]]) -> None:
        committed.extend(f"{operation} {type(obj).__name__}" for obj, operation in changes)

    models_committed.connect(remember, app, weak=False)

    @app.post("/authors")
    def add_author() -> tuple[dict[str, t.Any], int]:
        author = Author(name=request.get_json()["name"])
        db_session.add(author)
        db_session.commit()
        return {"id": author.id, "name": author.name}, 201

    @app.get("/authors/<int:author_id>")
    def get_author(author_id: int) -> dict[str, t.Any]:
        author = db_session.get_or_404(Author, author_id, description="No such author.")
        return {"name": author.name, "posts": [post.title for post in author.posts]}

    @app.get("/authors/by-name/<name>")
    def author_by_name(name: str) -> dict[str, t.Any]:
        author = db_session.one_or_404(select(Author).filter_by(name=name))
        return {"id": author.id, "name": author.name}

    @app.post("/authors/<int:author_id>/posts")
    def add_post(author_id: int) -> tuple[dict[str, t.Any], int]:
        author = db_session.get_or_404(Author, author_id)
        post = Post(title=request.get_json()["title"], author=author)
        db_session.add(post)
        db_session.commit()
        return post_json(post), 201

    @app.get("/posts")
    def list_posts() -> dict[str, t.Any]:
        page = db_session.paginate(select(Post).order_by(Post.id), max_per_page=10)
        return {
            "items": [post_json(post) for post in page.items],
            "page": page.page,
            "pages": page.pages,
            "total": page.total,
            "links": list(page.iter_pages()),
        }

    @app.get("/posts/latest")
    def latest_post() -> dict[str, t.Any]:
        return post_json(db_session.first_or_404(select(Post).order_by(Post.id.desc())))

    @app.get("/authors/count")
    def count_authors() -> dict[str, t.Any]:
        return {"count": Author.query.count(), "queries": len(get_recorded_queries())}

    @app.get("/committed")
    def list_committed() -> list[str]:
        return committed

    return app
