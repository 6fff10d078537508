"""The process lifecycle of engines: Quart's after_serving, Flask's exit, and os.fork().

Exit and fork are tested in a subprocess of their own, so that a hang or a broken shared
loop cannot leak into the test process; each is bounded by a timeout.
"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from async_scoped_session_ext import async_scoped_session, flask_scoped_session

from .support.databases import database_url, needs_pooled_aiosqlite, postgres_url, require_postgres
from .support.engines import checked_out, engines_of, fresh_tables, sync_url_of
from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo
from .support.scripts import run_script

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

# -- Quart: after_serving ------------------------------------------------------------------


@needs_quart
async def test_quart_disposes_config_engines_after_serving(
    async_backend: str, tmp_path: Path
) -> None:
    """Serving ends: the engines made from config are disposed; the next serving remakes them.

    The config is read again then, so a changed value takes effect at the next serving.
    """
    async_url = database_url(async_backend, tmp_path)
    scoped = async_scoped_session()
    scoped_sync = flask_scoped_session()
    app = Quart(__name__)
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": async_url}
    app.config["SQLALCHEMY_ENGINES"] = {"default": sync_url_of(async_url)}
    scoped.init_app(app)
    scoped_sync.init_app(app)
    closed: list[str] = []

    @app.get("/async")
    async def async_view() -> str:
        return str(await scoped.scalar(select(func.count()).select_from(Todo)))

    @app.get("/sync")
    def sync_view() -> str:  # Quart runs sync views in a worker thread
        return str(scoped_sync.scalar(select(func.count()).select_from(Todo)))

    async def serve_once() -> list[tuple[Engine | AsyncEngine, QueuePool]]:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            for path in ("/async", "/sync"):
                response = await client.get(path)
                assert await response.get_data(as_text=True) == "0"
            made = engines_of(app)
            assert len(made) == 2
            pools = []
            for engine in made:
                assert checked_out(engine) == 0
                kind = "async" if isinstance(engine, AsyncEngine) else "sync"
                pool = t.cast(QueuePool, engine.pool)
                assert pool.checkedin() == 1
                event.listen(pool, "close", lambda *args, kind=kind: closed.append(kind))
                pools.append((engine, pool))
        assert engines_of(app) == [], "after_serving left engines behind"
        return pools

    with fresh_tables(async_url):
        first = await serve_once()
        assert sorted(closed) == ["async", "sync"]
        assert [pool.checkedin() for _, pool in first] == [0, 0]

        closed.clear()
        app.config["SQLALCHEMY_ASYNC_ENGINES"] = {
            "default": {"url": async_url, "logging_name": "second"}
        }
        second = await serve_once()
        assert sorted(closed) == ["async", "sync"]
        assert {id(engine) for engine, _ in first}.isdisjoint(id(e) for e, _ in second)
        (async_engine,) = [e for e, _ in second if isinstance(e, AsyncEngine)]
        assert async_engine.sync_engine.logging_name == "second"
    assert len(scoped.registry) == 0 and len(scoped_sync.registry) == 0


# -- Flask: disposed at exit ---------------------------------------------------------------

FLASK_EXIT_SCRIPT = """
    import sys
    from flask import Flask
    from sqlalchemy import event, text
    from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session

    session = flask_scoped_session()
    asession = async_scoped_session()
    listening = set()


    def report_closes(engine, kind):
        if kind not in listening:
            listening.add(kind)
            event.listen(engine.pool, "close", lambda *args: print(kind, "pool closed"))


    def create_app(sync_url, async_url):
        app = Flask(__name__)
        app.config["SQLALCHEMY_ENGINES"] = {"default": sync_url}
        app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": async_url}
        session.init_app(app)
        asession.init_app(app)

        @app.get("/sync")
        def sync_view():
            report_closes(session().bind, "sync")
            return str(session.execute(text("select 1")).scalar_one())

        @app.get("/async")
        async def async_view():
            report_closes(asession().bind.sync_engine, "async")
            return str((await current_session.execute(text("select 2"))).scalar_one())

        return app


    client = create_app(sys.argv[1], sys.argv[2]).test_client()
    print("responses", client.get("/sync").text, client.get("/async").text, flush=True)
"""


@pytest.mark.parametrize(
    "backends",
    [
        pytest.param(("sqlite", "aiosqlite"), marks=needs_pooled_aiosqlite),
        ("postgresql", "asyncpg"),
    ],
)
def test_flask_disposes_config_engines_at_exit(backends: tuple[str, str], tmp_path: Path) -> None:
    """A Flask process disposes the sync and async engines it made from config at exit."""
    sync_backend, async_backend = backends
    urls = (database_url(sync_backend, tmp_path), database_url(async_backend, tmp_path))
    stdout = run_script(FLASK_EXIT_SCRIPT, *urls)
    assert stdout.splitlines() == ["responses 1 2", "sync pool closed", "async pool closed"]


QUART_CLI_EXIT_SCRIPT = """
    import sys
    import click
    from quart import Quart
    from sqlalchemy import event, text
    from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session

    session = flask_scoped_session()
    asession = async_scoped_session()
    app = Quart(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": sys.argv[1]}
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": sys.argv[2]}
    session.init_app(app)
    asession.init_app(app)


    def report_closes(engine, kind):
        event.listen(engine.pool, "close", lambda *args: print(kind, "pool closed"))


    async def select_two():
        report_closes(asession().bind.sync_engine, "async")
        return (await current_session.execute(text("select 2"))).scalar_one()


    @app.cli.command("check", with_appcontext=True)
    def check():
        report_closes(session().bind, "sync")
        click.echo(f"results {session.execute(text('select 1')).scalar_one()}"
                   f" {asession.run(select_two())}")


    result = app.test_cli_runner().invoke(args=["check"])
    print(result.output.strip(), flush=True)
"""


@needs_quart
@pytest.mark.parametrize(
    "backends",
    [
        pytest.param(("sqlite", "aiosqlite"), marks=needs_pooled_aiosqlite),
        ("postgresql", "asyncpg"),
    ],
)
def test_quart_cli_disposes_config_engines_at_exit(
    backends: tuple[str, str], tmp_path: Path
) -> None:
    """A Quart CLI command never serves, so after_serving never runs: the engines it made
    from config must still be disposed when the process exits."""
    sync_backend, async_backend = backends
    urls = (database_url(sync_backend, tmp_path), database_url(async_backend, tmp_path))
    stdout = run_script(QUART_CLI_EXIT_SCRIPT, *urls)
    assert stdout.splitlines()[0] == "results 1 2"
    assert sorted(stdout.splitlines()[1:]) == ["async pool closed", "sync pool closed"]


# -- os.fork() -----------------------------------------------------------------------------

FORK_SCRIPT = """
    import gc
    import json
    import sys

    from flask import Flask
    from sqlalchemy import create_engine, text
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.orm import sessionmaker
    from async_scoped_session_ext import async_scoped_session, flask_scoped_session
    from tests.support.forkprobe import in_forked_child

    kind, source = sys.argv[1].split("-")
    url = sys.argv[2]
    PID = text("select pg_backend_pid()")
    app = Flask(__name__)
    app.testing = True
    if kind == "sync":
        options = {"connect_args": {"connect_timeout": 5}}
        if source == "config":
            scoped = flask_scoped_session()
            app.config["SQLALCHEMY_ENGINES"] = {"default": {"url": url, **options}}
        else:
            scoped = flask_scoped_session(sessionmaker(bind=create_engine(url, **options)))
        scoped.init_app(app)

        @app.get("/pid")
        def pid_view():
            return str(scoped.execute(PID).scalar_one())

    else:
        # A query waits 5 s at most: a parent whose connection was broken fails, not hangs.
        options = {"connect_args": {"command_timeout": 5, "timeout": 5}}
        if source == "config":
            scoped = async_scoped_session()
            app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": {"url": url, **options}}
        else:
            scoped = async_scoped_session(async_sessionmaker(create_async_engine(url, **options)))
        scoped.init_app(app)

        @app.get("/pid")
        async def pid_view():
            return str((await scoped.execute(PID)).scalar_one())


    def backend_pid():
        try:
            return app.test_client().get("/pid").text
        except Exception as error:
            return f"error: {error!r}"


    def probe():
        first = backend_pid()
        gc.collect()  # a long-lived worker collects its garbage: the parent's objects too
        return [first, backend_pid()]


    before = backend_pid()
    in_child, status = in_forked_child(probe, default=[None, None])
    after = backend_pid()
    print(json.dumps({"before": before, "child": in_child, "status": status, "after": after}))
"""


@pytest.mark.parametrize("mode", ["sync-config", "async-config", "sync-given", "async-given"])
def test_forked_worker_opens_its_own_connections(mode: str) -> None:
    """A worker forked after the parent used its pool gets its own PostgreSQL connection,
    and the parent's pooled connection keeps working: for engines made from config and for
    the binds of given factories, sync and async (Flask's shared loop).

    ResourceWarnings are left at Python's default (ignored), as in a production worker:
    turned into errors, they would stop asyncpg's finaliser before it acts.
    """
    require_postgres()
    url = postgres_url("psycopg" if mode.startswith("sync") else "asyncpg")
    stdout = run_script(FORK_SCRIPT, mode, url, warnings=("error", "ignore::ResourceWarning"))
    result = json.loads(stdout)
    before, (in_child, again_in_child), after = result["before"], result["child"], result["after"]
    assert before.isdigit(), before
    assert result["status"] == 0, f"the worker failed or hung: {result}"
    assert in_child.isdigit() and in_child == again_in_child, result
    assert in_child != before, "the worker used the parent's pooled connection"
    assert after == before, f"the parent's pooled connection broke in the fork: {result}"
