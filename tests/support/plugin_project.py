"""The project the pytest plugin's own tests run pytest on (with ``pytester``).

One app module with three factories (sync Flask, Flask async views, Quart), one module of
other things ``asse_app`` may name (``APP_VARIANTS``), and one test file per kind of app:
each writes through the app's views and its own session, commits, fails on purpose, and
checks that nothing of an earlier test is left.
"""

from __future__ import annotations

APP_MODULE = """
from __future__ import annotations

from flask import Flask
from sqlalchemy import String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "plugin_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


COUNT = select(func.count(Item.id))
sync_session = flask_scoped_session()
async_session = async_scoped_session()


def create_flask(config=None):
    app = Flask(__name__)
    app.config.update(config or {})
    sync_session.init_app(app)

    @app.post("/items/<name>")
    def add(name):
        current_session.add(Item(name=name))
        current_session.commit()
        return {"count": current_session.scalar(COUNT)}

    @app.get("/items")
    def count():
        return {"count": current_session.scalar(COUNT)}

    return app


def create_flask_async(config=None):
    app = Flask(__name__)
    app.config.update(config or {})
    async_session.init_app(app)

    @app.post("/items/<name>")
    async def add(name):
        current_session.add(Item(name=name))
        await current_session.commit()
        return {"count": await current_session.scalar(COUNT)}

    @app.get("/items")
    async def count():
        return {"count": await current_session.scalar(COUNT)}

    return app


def create_quart(config=None):
    from quart import Quart  # only here: Flask 2.3's compat cell has no Quart

    app = Quart(__name__)
    app.config.update(config or {})
    async_session.init_app(app)

    @app.post("/items/<name>")
    async def add(name):
        current_session.add(Item(name=name))
        await current_session.commit()
        return {"count": await current_session.scalar(COUNT)}

    @app.get("/items")
    async def count():
        return {"count": await current_session.scalar(COUNT)}

    return app
"""

FLASK_TESTS = """
from sqlalchemy import select

from async_scoped_session_ext import current_session
from app_under_test import COUNT, Item


def test_view_commits(client, db_session):
    assert client.post("/items/a").json == {"count": 1}
    assert client.post("/items/b").json == {"count": 2}
    assert db_session.scalars(select(Item.name).order_by(Item.name)).all() == ["a", "b"]


def test_later_test_sees_no_commit(client, db_session):
    assert db_session.scalar(COUNT) == 0
    assert client.get("/items").json == {"count": 0}


def test_own_session_commits_and_view_sees_it(client, db_session):
    db_session.add(Item(name="mine"))
    db_session.commit()
    assert client.get("/items").json == {"count": 1}


def test_app_context_commits(app, isolated_db):
    with app.app_context():
        current_session.add(Item(name="ctx"))
        current_session.commit()
    with app.app_context():
        assert current_session.scalar(COUNT) == 1


def test_fails_after_commit(client):
    assert client.post("/items/doomed").json == {"count": 1}
    raise AssertionError("fails on purpose")


def test_after_the_failure(client, db_session):
    assert db_session.scalar(COUNT) == 0
    assert client.get("/items").json == {"count": 0}
"""

FLASK_ASYNC_TESTS = """
from sqlalchemy import select

from async_scoped_session_ext import current_session
from app_under_test import COUNT, Item, async_session


def test_view_commits(client, isolated_db, async_db_session):
    assert client.post("/items/a").json == {"count": 1}
    assert client.post("/items/b").json == {"count": 2}
    names = isolated_db.run(async_db_session.scalars(select(Item.name).order_by(Item.name)))
    assert names.all() == ["a", "b"]


def test_later_test_sees_no_commit(client, isolated_db, async_db_session):
    assert isolated_db.run(async_db_session.scalar(COUNT)) == 0
    assert client.get("/items").json == {"count": 0}


def test_own_session_commits_and_view_sees_it(client, isolated_db, async_db_session):
    async def add():
        async_db_session.add(Item(name="mine"))
        await async_db_session.commit()

    isolated_db.run(add())
    assert client.get("/items").json == {"count": 1}


def test_app_context_commits(app, isolated_db):
    async def add():
        current_session.add(Item(name="ctx"))
        await current_session.commit()

    with app.app_context():
        async_session.run(add())
    with app.app_context():
        assert async_session.run(current_session.scalar(COUNT)) == 1


def test_fails_after_commit(client):
    assert client.post("/items/doomed").json == {"count": 1}
    raise AssertionError("fails on purpose")


def test_after_the_failure(client, isolated_db, async_db_session):
    assert isolated_db.run(async_db_session.scalar(COUNT)) == 0
    assert client.get("/items").json == {"count": 0}
"""

QUART_TESTS = """
from sqlalchemy import select

from async_scoped_session_ext import current_session
from app_under_test import COUNT, Item


async def test_view_commits(client, async_db_session):
    assert await (await client.post("/items/a")).get_json() == {"count": 1}
    assert await (await client.post("/items/b")).get_json() == {"count": 2}
    names = await async_db_session.scalars(select(Item.name).order_by(Item.name))
    assert names.all() == ["a", "b"]


async def test_later_test_sees_no_commit(client, async_db_session):
    assert await async_db_session.scalar(COUNT) == 0
    assert await (await client.get("/items")).get_json() == {"count": 0}


async def test_own_session_commits_and_view_sees_it(client, async_db_session):
    async_db_session.add(Item(name="mine"))
    await async_db_session.commit()
    assert await (await client.get("/items")).get_json() == {"count": 1}


async def test_app_context_commits(app, isolated_db):
    async with app.app_context():
        current_session.add(Item(name="ctx"))
        await current_session.commit()
    async with app.app_context():
        assert await current_session.scalar(COUNT) == 1


async def test_fails_after_commit(client):
    assert await (await client.post("/items/doomed")).get_json() == {"count": 1}
    raise AssertionError("fails on purpose")


async def test_after_the_failure(client, async_db_session):
    assert await async_db_session.scalar(COUNT) == 0
    assert await (await client.get("/items")).get_json() == {"count": 0}
"""

# The other things ``asse_app`` may name: the app itself, a factory whose signature
# cannot be read, and (mistakes) neither, or a factory of something else.
APP_VARIANTS = """
import functools
import itertools

from app_under_test import create_flask

app = create_flask({"SQLALCHEMY_ENGINES": {"default": "sqlite://", "other": "sqlite://"}})
# A C-implemented callable, whose signature inspect cannot read (as a compiled factory's).
unreadable = functools.partial(next, itertools.repeat(app))
settings = {"SQLALCHEMY_ENGINES": {}}  # neither an app nor a factory


def make_settings():  # a factory that does not return an app
    return settings
"""

VARIANT_TESTS = """
import app_variants


def test_config_applied(app, client):
    assert app is app_variants.app
    assert app.config["TESTING"] is True
    assert app.config["SQLALCHEMY_ENGINES"] == {{"default": {url!r}, "other": "sqlite://"}}
    assert client.post("/items/x").json == {{"count": 1}}


def test_rolled_back(client):
    assert client.post("/items/y").json == {{"count": 1}}
"""

TESTS = {"flask": FLASK_TESTS, "flask_async": FLASK_ASYNC_TESTS, "quart": QUART_TESTS}

BASE_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
filterwarnings = error
"""

INI = (
    BASE_INI
    + """
asse_app = app_under_test:create_{kind}
{url_option} = {url}
"""
)

# Two tests through the project's own ``app`` fixture: each starts from an empty table.
OWN_APP_TESTS = """
def test_first(client):
    assert client.post("/items/x").json == {"count": 1}

def test_second(client):
    assert client.post("/items/y").json == {"count": 1}
"""
