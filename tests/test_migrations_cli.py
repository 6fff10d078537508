"""The ``db`` group as users meet it: the real ``flask`` and ``quart`` executables, its
configurable name, and a clear message when Alembic is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from async_scoped_session_ext import flask_scoped_session

from .support.environment import child_environ, needs_quart
from .support.migrations import make_app
from .support.scripts import REPO_ROOT, TIMEOUT, run_script

PROJECT = """\
from {framework} import {cls}
from sqlalchemy import Column, Integer, MetaData, Table

from async_scoped_session_ext import {kind}

metadata = MetaData()
Table("cli_item", metadata, Column("id", Integer, primary_key=True))
scoped = {kind}(metadata=metadata)


def create_app():
    app = {cls}(__name__)
    app.config["{key}"] = {{"default": "{url}"}}
    scoped.init_app(app)
    return app
"""


def run_cli(executable: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``<executable> --app app db ARGS`` in *cwd*; fail unless it succeeds."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / executable), "--app", "app", "db", *args],
        cwd=cwd,
        env={**child_environ("error"), "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize(
    "framework",
    ["flask", pytest.param("quart", marks=needs_quart)],
)
def test_real_executables(framework: str, tmp_path: Path) -> None:
    """``flask --app app db upgrade`` / ``quart --app app db upgrade`` create the table."""
    is_quart = framework == "quart"
    url = f"sqlite{'+aiosqlite' if is_quart else ''}:///{tmp_path / 'app.db'}"
    (tmp_path / "app.py").write_text(
        PROJECT.format(
            framework=framework,
            cls="Quart" if is_quart else "Flask",
            kind="async_scoped_session" if is_quart else "flask_scoped_session",
            key="SQLALCHEMY_ASYNC_ENGINES" if is_quart else "SQLALCHEMY_ENGINES",
            url=url,
        )
    )
    initialised = run_cli(framework, tmp_path, "init")
    assert f"Next: '{framework} db revision --autogenerate" in initialised.stdout
    run_cli(framework, tmp_path, "revision", "--autogenerate", "-m", "items", "--rev-id", "r1")
    upgraded = run_cli(framework, tmp_path, "upgrade")
    # Logging comes from migrations/alembic.ini: the app configured none.
    assert "Running upgrade  -> r1, items" in upgraded.stderr
    assert "Engine 'default'" in upgraded.stderr
    assert run_cli(framework, tmp_path, "current").stdout == "r1 (head)\n"
    import sqlite3

    with sqlite3.connect(tmp_path / "app.db") as conn:
        tables = {row[0] for row in conn.execute("select name from sqlite_master")}
    conn.close()
    assert {"cli_item", "alembic_version"} <= tables


def test_group_name_from_config() -> None:
    """SQLALCHEMY_CLI_GROUP names the group; None adds none; an existing 'db' is kept."""
    named = Flask(__name__)
    named.config["SQLALCHEMY_CLI_GROUP"] = "sqla"
    flask_scoped_session(app=named)
    assert "sqla" in named.cli.commands and "db" not in named.cli.commands
    result = named.test_cli_runner().invoke(args=["sqla", "--help"])
    assert result.exit_code == 0 and "upgrade" in result.output
    none = Flask(__name__)
    none.config["SQLALCHEMY_CLI_GROUP"] = None
    flask_scoped_session(app=none)
    assert none.cli.commands == {}
    taken = Flask(__name__)

    @taken.cli.command("db")
    def other() -> None:
        """Another extension's db command (Flask-Migrate's, say)."""

    flask_scoped_session(app=taken)
    assert taken.cli.commands["db"].callback is other.callback


def test_errors_say_the_fix(tmp_path: Path) -> None:
    """Autogenerate without metadata= says to give it; no scoped session says so too."""
    made = make_app("flask", {"default": f"sqlite:///{tmp_path / 'a.db'}"}, metadata=False)
    made.app.config["SQLALCHEMY_MIGRATIONS_DIRECTORY"] = str(tmp_path / "migrations")
    made.ok("init")
    result = made.invoke("revision", "--autogenerate")
    assert result.exit_code == 1
    assert "metadata=" in result.output and "target_metadata=" in result.output
    assert made.ok("create-all") == "default: no metadata= given, skipped\n"
    bad = make_app("flask", {"read-only": f"sqlite:///{tmp_path / 'b.db'}"})
    result = bad.invoke("create-all")
    assert isinstance(result.exception, ValueError)
    assert "not a Python identifier" in str(result.exception)


def test_without_alembic() -> None:
    """Registering the group imports no Alembic; a command without it says how to install."""
    output = run_script(
        """
        import sys

        from flask import Flask

        from async_scoped_session_ext import flask_scoped_session

        app = Flask(__name__)
        flask_scoped_session(app=app)
        assert "alembic" not in sys.modules and "db" in app.cli.commands
        sys.modules["alembic"] = None  # import alembic now raises ImportError
        result = app.test_cli_runner().invoke(args=["db", "upgrade"])
        print(result.exit_code)
        print(result.output)
        """
    )
    code, message = output.split("\n", 1)
    assert code == "1"
    assert "Alembic is not installed" in message
    assert "pip install 'async-scoped-session-ext[alembic]'" in message
