"""Make docs/_static/debugtoolbar-queries.png: the debug toolbar's Queries panel, open.

Serves a small Flask app (SQLite in a temporary directory, flask-debugtoolbar with the
library's panel) on a free loopback port, and has headless Chromium take a screenshot of
its page. The page opens the panel itself once the toolbar is ready (a click on its tab,
as a person would), so the picture shows the request's statements. Needs
``apt-get install chromium`` and the ``debugtoolbar`` extra::

    python docs/screenshots.py [OUTPUT.png]
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one

from flask import Flask, request  # noqa: E402
from flask_debugtoolbar import DebugToolbarExtension  # noqa: E402
from sqlalchemy import Engine, String, create_engine, func, select  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from async_scoped_session_ext import flask_scoped_session  # noqa: E402

OUTPUT = ROOT / "docs" / "_static" / "debugtoolbar-queries.png"

# A click on the panel's tab once the toolbar's script has set it up (on DOM ready, before
# the load event).
OPEN_PANEL = """<script>
window.addEventListener("load", function () {
  document.querySelector("#flDebugPanelList a.flDebugQueriesPanel").click();
});
</script>"""


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    done: Mapped[bool] = mapped_column(default=False)


def make_app(engine: Engine) -> Flask:
    Base.metadata.create_all(engine)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="screenshot",
        DEBUG_TB_ENABLED=True,
        DEBUG_TB_INTERCEPT_REDIRECTS=False,
        SQLALCHEMY_RECORD_QUERIES=True,
        DEBUG_TB_PANELS=[
            "flask_debugtoolbar.panels.versions.VersionDebugPanel",
            "flask_debugtoolbar.panels.timer.TimerDebugPanel",
            "flask_debugtoolbar.panels.headers.HeaderDebugPanel",
            "flask_debugtoolbar.panels.request_vars.RequestVarsDebugPanel",
            "async_scoped_session_ext.debugtoolbar.QueriesPanel",
        ],
    )
    db = flask_scoped_session(sessionmaker(engine), app)
    with app.app_context():
        titles = ["Write the docs", "Record the queries", "Ship 0.1", "Take a screenshot"]
        db.add_all(Todo(title=title, done=index % 2 == 0) for index, title in enumerate(titles))
        db.commit()

    @app.get("/")
    def todos() -> str:
        search = request.args.get("q", "")
        left = db.scalar(select(func.count(Todo.id)).where(Todo.done.is_(False)))
        found = db.scalars(
            select(Todo).where(Todo.title.contains(search)).order_by(Todo.id).limit(20)
        ).all()
        items = "".join(f"<li>{'[x]' if todo.done else '[ ]'} {todo.title}</li>" for todo in found)
        return (
            "<!doctype html><html><head><title>Todos</title></head>"
            f"<body><h1>Todos ({left} left)</h1><ul>{items}</ul>{OPEN_PANEL}</body></html>"
        )

    DebugToolbarExtension(app)
    return app


def screenshot(url: str, output: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed: apt-get install chromium")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--window-size=1280,900",
                "--virtual-time-budget=5000",  # the toolbar's scripts and styles load first
                f"--screenshot={output}",
                url,
            ],
            check=True,
            timeout=90,
            capture_output=True,
        )


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    with tempfile.TemporaryDirectory() as directory:
        engine = create_engine(f"sqlite:///{Path(directory) / 'todos.db'}")
        server = make_server("127.0.0.1", 0, make_app(engine), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            screenshot(f"http://127.0.0.1:{server.server_port}/?q=the", output)
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()
            engine.dispose()
    print(output)


if __name__ == "__main__":
    main()
