"""The ``db`` commands run Alembic on every engine of the app, sync and async, one or two.

Flask sync on pysqlite and psycopg, Flask async and Quart on aiosqlite and asyncpg; each
engine has a database of its own, and each gets its tables and its ``alembic_version``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .support.migrations import CASES, ENGINE_NAMES, project


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize(("framework", "backend"), CASES)
def test_init_revision_upgrade_downgrade(
    framework: str, backend: str, count: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init, revision --autogenerate and upgrade create each engine's table; downgrade drops."""
    if framework.startswith("quart"):
        pytest.importorskip("quart")
    monkeypatch.chdir(tmp_path)  # the default directory is ./migrations
    names = ENGINE_NAMES[count]
    with project(framework, backend, count, tmp_path) as made:
        made.ok("init")
        assert (tmp_path / "migrations" / "env.py").is_file()
        made.ok("revision", "--autogenerate", "-m", "first", "--rev-id", "rev1")
        script = (tmp_path / "migrations" / "versions" / "rev1_first.py").read_text()
        for name in names:
            assert f"def upgrade_{name}() -> None:" in script
            assert f"op.create_table('{name}_item'" in script
        made.ok("upgrade")
        for name in names:
            assert made.tables(name) == {"alembic_version", f"{name}_item"}
        assert made.ok("current") == "rev1 (head)\n" * count
        assert made.ok("history") == "<base> -> rev1 (head), first\n"
        assert "Rev: rev1 (head)" in made.ok("history", "-r", "base:head", "-v")
        assert made.ok("current", "-v").count("Rev: rev1 (head)") == count
        made.ok("downgrade")  # -1: to the base
        for name in names:
            assert made.tables(name) == {"alembic_version"}
        assert made.ok("current") == ""
        made.ok("stamp", "head")  # the revision is recorded; nothing runs
        assert made.ok("current") == "rev1 (head)\n" * count
        for name in names:
            assert made.tables(name) == {"alembic_version"}


@pytest.mark.parametrize(("framework", "backend"), [CASES[0], CASES[3], CASES[4]])
def test_revision_without_autogenerate_and_offline_sql(
    framework: str, backend: str, tmp_path: Path
) -> None:
    """A plain revision has a pass per engine; upgrade --sql prints each engine's SQL."""
    if framework.startswith("quart"):
        pytest.importorskip("quart")
    with project(framework, backend, 2, tmp_path) as made:
        directory = str(tmp_path / "elsewhere")
        made.app.config["SQLALCHEMY_MIGRATIONS_DIRECTORY"] = directory
        made.ok("init")
        made.ok("revision", "-m", "empty", "--rev-id", "e1")
        script = (tmp_path / "elsewhere" / "versions" / "e1_empty.py").read_text()
        assert script.count("    pass\n") == 5  # _nothing() and two per engine
        output = made.ok("upgrade", "--sql")
        assert output.index("-- Engine: default") < output.index("-- Engine: users")
        assert output.count("CREATE TABLE alembic_version") == 2
        for name in ENGINE_NAMES[2]:
            assert made.tables(name) == set()  # offline: nothing ran


@pytest.mark.parametrize(("framework", "backend"), [CASES[0], CASES[2], CASES[5]])
def test_create_all_and_drop_all(framework: str, backend: str, tmp_path: Path) -> None:
    """create-all makes each engine's tables; drop-all asks first, then drops them."""
    if framework.startswith("quart"):
        pytest.importorskip("quart")
    with project(framework, backend, 2, tmp_path) as made:
        assert made.ok("create-all") == "default: create all done\nusers: create all done\n"
        for name in ENGINE_NAMES[2]:
            assert made.tables(name) == {f"{name}_item"}
        refused = made.invoke("drop-all", input="n\n")
        assert refused.exit_code == 1 and "Aborted" in refused.output
        assert made.tables("users") == {"users_item"}
        made.ok("drop-all", "--yes")
        for name in ENGINE_NAMES[2]:
            assert made.tables(name) == set()
