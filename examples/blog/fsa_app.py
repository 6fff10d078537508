"""The blog API as a Flask-SQLAlchemy 3.1 app: what ``app.py`` was migrated from.

Kept to show the migration (docs/migrating.md) and to check it: ``tests/test_blog_example.py``
sends the same requests to both and expects the same answers. Needs ``flask-sqlalchemy``.
"""

from __future__ import annotations

import typing as t

from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.record_queries import get_recorded_queries
from flask_sqlalchemy.track_modifications import models_committed
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Author(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    posts: Mapped[list[Post]] = relationship(back_populates="author", order_by="Post.id")


class Post(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "post"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship(back_populates="posts")


def post_json(post: Post) -> dict[str, t.Any]:
    return {"id": post.id, "title": post.title, "author": post.author.name}


def create_app(database_url: str) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["SQLALCHEMY_RECORD_QUERIES"] = True
    app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = True
    db.init_app(app)
    with app.app_context():
        db.create_all()
    committed: list[str] = []

    def remember(sender: Flask, changes: list[tuple[t.Any, str]]) -> None:
        committed.extend(f"{operation} {type(obj).__name__}" for obj, operation in changes)

    models_committed.connect(remember, app, weak=False)

    @app.post("/authors")
    def add_author() -> tuple[dict[str, t.Any], int]:
        author = Author(name=request.get_json()["name"])
        db.session.add(author)
        db.session.commit()
        return {"id": author.id, "name": author.name}, 201

    @app.get("/authors/<int:author_id>")
    def get_author(author_id: int) -> dict[str, t.Any]:
        author = db.get_or_404(Author, author_id, description="No such author.")
        return {"name": author.name, "posts": [post.title for post in author.posts]}

    @app.get("/authors/by-name/<name>")
    def author_by_name(name: str) -> dict[str, t.Any]:
        author = db.one_or_404(db.select(Author).filter_by(name=name))
        return {"id": author.id, "name": author.name}

    @app.post("/authors/<int:author_id>/posts")
    def add_post(author_id: int) -> tuple[dict[str, t.Any], int]:
        author = db.get_or_404(Author, author_id)
        post = Post(title=request.get_json()["title"], author=author)
        db.session.add(post)
        db.session.commit()
        return post_json(post), 201

    @app.get("/posts")
    def list_posts() -> dict[str, t.Any]:
        page = db.paginate(db.select(Post).order_by(Post.id), max_per_page=10)
        return {
            "items": [post_json(post) for post in page.items],
            "page": page.page,
            "pages": page.pages,
            "total": page.total,
            "links": list(page.iter_pages()),
        }

    @app.get("/posts/latest")
    def latest_post() -> dict[str, t.Any]:
        return post_json(db.first_or_404(db.select(Post).order_by(Post.id.desc())))

    @app.get("/authors/count")
    def count_authors() -> dict[str, t.Any]:
        return {"count": Author.query.count(), "queries": len(get_recorded_queries())}

    @app.get("/committed")
    def list_committed() -> list[str]:
        return committed

    return app
