"""``examples/blog``: the Flask-SQLAlchemy 3.1 app and its migration answer alike, request for
request, on SQLite and PostgreSQL (404s, pagination, Model.query, recorded queries and the
models_committed signal included; the signal lists only models with net changes)."""

from __future__ import annotations

import collections.abc as cabc
import importlib.metadata
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine

from examples.blog import app as migrated

from .support.databases import database_url
from .support.engines import disposing

#: (method, path, JSON body) of each request, in order.
REQUESTS: list[tuple[str, str, dict[str, str] | None]] = [
    ("POST", "/authors", {"name": "ada"}),
    ("POST", "/authors", {"name": "bob"}),
    ("GET", "/authors/3", None),
    ("GET", "/authors/by-name/ada", None),
    ("GET", "/authors/by-name/zed", None),
    *[("POST", "/authors/1/posts", {"title": f"post {n}"}) for n in range(1, 13)],
    ("POST", "/authors/9/posts", {"title": "nobody's"}),
    ("GET", "/posts", None),
    ("GET", "/posts?page=2", None),
    ("GET", "/posts?page=3", None),
    ("GET", "/posts?per_page=5&page=3", None),
    ("GET", "/posts?page=zero", None),
    ("GET", "/posts/latest", None),
    ("GET", "/authors/1", None),
    ("GET", "/authors/count", None),
    ("GET", "/committed", None),
]


def answers(app: Flask) -> list[tuple[int, t.Any]]:
    """Each request's status and JSON answer (for an error: whether the text says why)."""
    client = app.test_client()
    found: list[tuple[int, t.Any]] = []
    for method, path, body in REQUESTS:
        response = client.open(path, method=method, json=body)
        if response.status_code >= 400:
            found.append((response.status_code, "No such author." in response.text))
        else:
            found.append((response.status_code, response.json))
    return found


@pytest.fixture
def url(sync_backend: str, tmp_path: Path) -> cabc.Iterator[str]:
    """A database for the blog's tables, dropped afterwards."""
    url = database_url(sync_backend, tmp_path)
    yield url
    engine = create_engine(url)
    try:
        migrated.Base.metadata.drop_all(engine)
    finally:
        engine.dispose()


def test_the_migrated_blog_answers_as_the_original(url: str) -> None:
    """Every request gets the same status and JSON from both apps, and the expected ones."""
    if _flask_sqlalchemy_version() < (3, 1):  # the oldest compat cells: SQLAlchemy < 2.0.16
        pytest.skip("the original needs Flask-SQLAlchemy 3.1")
    from examples.blog import fsa_app

    with disposing(migrated.create_app(url)) as app:
        ours = answers(app)
    engine = create_engine(url)
    migrated.Base.metadata.drop_all(engine)
    engine.dispose()
    original_app = fsa_app.create_app(url)
    try:
        original = answers(original_app)
    finally:
        with original_app.app_context():
            fsa_app.db.drop_all()
            fsa_app.db.engine.dispose()
    # Flask-SQLAlchemy's models_committed also lists each author whose posts collection a
    # new post joined (it is in session.dirty), though no UPDATE is written; the library
    # lists only objects with net changes (Session.is_modified). Everything else is equal.
    committed = REQUESTS.index(("GET", "/committed", None))
    assert ours[:committed] + ours[committed + 1 :] == (
        original[:committed] + original[committed + 1 :]
    )
    assert [change for change in original[committed][1] if change != "update Author"] == (
        ours[committed][1]
    )
    by_path = dict(zip([f"{method} {path}" for method, path, _ in REQUESTS], ours, strict=False))
    assert by_path["GET /authors/3"] == (404, True)
    assert by_path["GET /authors/by-name/zed"][0] == 404
    assert by_path["POST /authors/9/posts"][0] == 404
    assert by_path["GET /posts?page=3"][0] == 404
    page_one = by_path["GET /posts"][1]
    assert (page_one["total"], page_one["pages"], len(page_one["items"])) == (12, 2, 10)
    assert by_path["GET /posts?per_page=5&page=3"][1]["links"] == [1, 2, 3]
    assert by_path["GET /posts/latest"][1]["title"] == "post 12"
    assert by_path["GET /authors/count"][1] == {"count": 2, "queries": 1}
    assert by_path["GET /committed"][1] == ["insert Author"] * 2 + ["insert Post"] * 12


def _flask_sqlalchemy_version() -> tuple[int, ...]:
    """The installed Flask-SQLAlchemy's (major, minor), or ``()`` without it (its
    ``__version__`` is deprecated)."""
    try:
        version = importlib.metadata.version("flask-sqlalchemy")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in version.split(".")[:2])


def test_the_migration_keeps_the_app_about_its_size() -> None:
    """The migrated app is within 15 lines of the Flask-SQLAlchemy original."""
    here = Path(migrated.__file__).parent
    ours = len((here / "app.py").read_text().splitlines())
    original = len((here / "fsa_app.py").read_text().splitlines())
    assert ours <= original + 15, (ours, original)
