"""The flask-debugtoolbar panel: sync Flask on pysqlite and psycopg, async views on
aiosqlite and asyncpg, through the test client and a real server."""

from __future__ import annotations

import collections.abc as cabc
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from flask import Flask
from markupsafe import escape
from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import async_scoped_session, flask_scoped_session

from .support.databases import database_url, engine_on_shared_loop
from .support.environment import IN_CI, child_environ
from .support.models import Todo
from .support.servers import serving_wsgi

pytest.importorskip("flask_debugtoolbar")

from flask_debugtoolbar import DebugToolbarExtension

# flask-debugtoolbar (0.16) replaces app.dispatch_request with a method that takes no
# argument; Flask's next release (3.2, the compat cell on Flask main) passes it the context.
if len(inspect.signature(Flask.dispatch_request).parameters) > len(
    inspect.signature(DebugToolbarExtension.dispatch_request).parameters
):
    pytest.skip(
        "this flask-debugtoolbar cannot run on this Flask: Flask.dispatch_request takes a"
        " context, DebugToolbarExtension.dispatch_request does not",
        allow_module_level=True,
    )

PANEL = "async_scoped_session_ext.debugtoolbar.QueriesPanel"
PAGE = "<!doctype html><html><body><h1>{}</h1></body></html>"
ROOT = Path(__file__).resolve().parent.parent


def toolbar_app(record: bool = True) -> Flask:
    """An app with the toolbar on and the panel listed (the toolbar is added by the caller,
    after the routes: its ``init_app`` must come after the config)."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test",
        DEBUG_TB_ENABLED=True,
        DEBUG_TB_INTERCEPT_REDIRECTS=False,
        DEBUG_TB_PANELS=["flask_debugtoolbar.panels.timer.TimerDebugPanel", PANEL],
        SQLALCHEMY_RECORD_QUERIES=record,
    )
    return app


def panel_of(page: str) -> str:
    """The Queries panel's nav entry and content, from the page's HTML."""
    nav = re.search(r'<li id="flDebugQueriesPanel">(.*?)</li>', page, re.S)
    content = re.search(r'id="flDebugQueriesPanel-content"(.*?)</table>', page, re.S)
    assert nav is not None, "the panel is not in the toolbar"
    return nav.group(1) + (content.group(1) if content is not None else "")


def test_sync_view(sync_engine: Engine) -> None:
    """The page's SELECT, its parameter and the view's line are in the toolbar."""
    app = toolbar_app()
    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    line = 0

    @app.get("/")
    def page() -> str:
        nonlocal line
        line = sys._getframe().f_lineno + 1
        todos = scoped.scalars(select(Todo).where(Todo.title == "needle")).all()
        return PAGE.format(len(todos))

    DebugToolbarExtension(app)
    panel = panel_of(app.test_client().get("/").get_data(as_text=True))
    assert "1 query in" in panel
    assert "asse_test_todo" in panel and escape("'needle'") in panel
    assert f"test_debugtoolbar.py:{line} (page)" in panel


@pytest.fixture
def shared_engine(async_backend: str, tmp_path: Path) -> cabc.Iterator[AsyncEngine]:
    with engine_on_shared_loop(database_url(async_backend, tmp_path)) as engine:
        yield engine


def test_async_view(shared_engine: AsyncEngine) -> None:
    """An async view works under the toolbar (the panel awaits it) and its queries show."""
    app = toolbar_app()
    scoped = async_scoped_session(async_sessionmaker(shared_engine), app)

    @app.get("/")
    async def page() -> str:
        todos = (await scoped.scalars(select(Todo).where(Todo.title == "needle"))).all()
        return PAGE.format(len(todos))

    DebugToolbarExtension(app)
    response = app.test_client().get("/")
    assert response.status_code == 200
    panel = panel_of(response.get_data(as_text=True))
    assert "1 query in" in panel and "asse_test_todo" in panel
    assert "test_debugtoolbar.py:" in panel and "(page)" in panel


def test_recording_off_says_how_to_turn_it_on(sync_engine: Engine) -> None:
    """With the setting off, the tab says so and the panel names the config key."""
    app = toolbar_app(record=False)
    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    app.add_url_rule("/", "page", lambda: PAGE.format(scoped.scalars(select(Todo)).all()))
    DebugToolbarExtension(app)
    page = app.test_client().get("/").get_data(as_text=True)
    assert "recording off" in panel_of(page)
    assert "SQLALCHEMY_RECORD_QUERIES" in page


def test_a_page_without_queries(sync_engine: Engine) -> None:
    """A page that ran no statement gets a tab that counts none and a panel that says so."""
    app = toolbar_app()
    flask_scoped_session(sessionmaker(sync_engine), app)
    app.add_url_rule("/", "page", lambda: PAGE.format("no database"))
    DebugToolbarExtension(app)
    page = app.test_client().get("/").get_data(as_text=True)
    assert "0 queries in 0.00 ms" in panel_of(page)
    assert "No statement ran" in page


def test_debug_mode_turns_recording_on(sync_engine: Engine) -> None:
    """In debug mode the toolbar's default turns recording on, though it came after init_app."""
    app = toolbar_app()
    del app.config["SQLALCHEMY_RECORD_QUERIES"]
    app.debug = True
    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    app.add_url_rule("/", "page", lambda: PAGE.format(scoped.scalars(select(Todo)).all()))
    DebugToolbarExtension(app)  # after the scoped session's init_app
    assert "1 query in" in panel_of(app.test_client().get("/").get_data(as_text=True))


def test_a_real_server(sync_engine: Engine) -> None:
    """Over HTTP from a threaded werkzeug server: the page and the toolbar's own files."""
    app = toolbar_app()
    scoped = flask_scoped_session(sessionmaker(sync_engine), app)
    app.add_url_rule("/", "page", lambda: PAGE.format(scoped.scalars(select(Todo)).all()))
    DebugToolbarExtension(app)
    with serving_wsgi(app) as url, httpx.Client(base_url=url) as client:
        for _ in range(2):  # each request its own queries
            assert "1 query in" in panel_of(client.get("/").text)
        assert client.get("/_debug_toolbar/static/js/toolbar.js").status_code == 200


@pytest.mark.skipif(  # CI installs it (.ci/run): there, a missing Chromium fails the test
    shutil.which("chromium") is None and not IN_CI, reason="needs chromium (apt-get install)"
)
def test_the_screenshot_script(tmp_path: Path) -> None:
    """``docs/screenshots.py`` makes a PNG of the open panel with headless Chromium."""
    output = tmp_path / "toolbar.png"
    subprocess.run(
        [sys.executable, str(ROOT / "docs" / "screenshots.py"), str(output)],
        check=True,
        timeout=120,
        env=child_environ("error"),
    )
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert output.stat().st_size > 20_000  # a page with the open panel, not a blank one
