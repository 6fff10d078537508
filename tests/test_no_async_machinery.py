"""A sync-only Flask app gets no async machinery: no asgiref, no threads, no event loops."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from flask import Flask
from flask.signals import appcontext_tearing_down
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import flask_scoped_session

from .support.environment import child_environ

REPO_ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import asyncio
    import inspect
    import json
    import sys
    import threading

    loops_created = 0
    original_init = asyncio.BaseEventLoop.__init__

    def counting_init(self, *args, **kwargs):
        global loops_created
        loops_created += 1
        original_init(self, *args, **kwargs)

    asyncio.BaseEventLoop.__init__ = counting_init

    from flask import Flask
    from flask.signals import appcontext_tearing_down
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import sessionmaker

    from async_scoped_session_ext import current_session, flask_scoped_session

    engine = create_engine("sqlite://")
    app = Flask("sync_only")
    flask_scoped_session(sessionmaker(bind=engine), app)

    @app.get("/")
    def index():
        return str(current_session.execute(text("select 1")).scalar_one())

    client = app.test_client()
    statuses = []
    for _ in range(20):
        response = client.get("/")
        statuses.append((response.status_code, response.get_data(as_text=True)))
    engine.dispose()

    print(json.dumps({
        "statuses": statuses,
        "asgiref_imported": "asgiref" in sys.modules,
        "threads": threading.active_count(),
        "loops_created": loops_created,
        "teardowns": len(list(appcontext_tearing_down.receivers_for(app))),
        "async_teardowns": [
            f.__qualname__
            for f in [*app.teardown_appcontext_funcs, *appcontext_tearing_down.receivers_for(app)]
            if inspect.iscoroutinefunction(f)
        ],
    }))
    """
)


def test_sync_app_in_fresh_process_has_no_async_machinery() -> None:
    """Twenty requests to a sync app import no asgiref, start no thread and create no loop."""
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO_ROOT,
        env=child_environ("error"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [[200, "1"]] * 20
    assert report["asgiref_imported"] is False
    assert report["threads"] == 1
    assert report["loops_created"] == 0
    assert report["teardowns"] == 1
    assert report["async_teardowns"] == []


def test_init_app_registers_only_plain_teardowns() -> None:
    """After ``init_app`` on a Flask app, its teardown (a signal receiver) is a plain function."""
    app = Flask(__name__)
    engine = create_engine("sqlite://")
    try:
        flask_scoped_session(sessionmaker(bind=engine)).init_app(app)
        receivers = list(appcontext_tearing_down.receivers_for(app))
        assert len(receivers) == 1, "no teardown was registered"
        for function in [*receivers, *app.teardown_appcontext_funcs]:
            assert not inspect.iscoroutinefunction(function), function
    finally:
        engine.dispose()
