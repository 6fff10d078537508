"""Fork safety for every engine a session factory reaches: ``bind``, ``binds``, a replica.

A worker forked after the parent used its engines (gunicorn ``--preload``) must open its
own connections for each of them, or it shares the parent's sockets and reads other
requests' rows. Proven on PostgreSQL: a connection is a backend with its own pid.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import typing as t
import urllib.request
from pathlib import Path

import pytest

from .support.databases import postgres_url, require_postgres
from .support.scripts import REPO_ROOT, run_script

ROLES = ["primary", "replica", "first", "second"]

# One factory reaching four engines: the primary (``bind``), the replica (a ReplicaSession
# keyword argument) and two ``binds`` entries. All four are the same database: each engine's
# own connection is a PostgreSQL backend with a pid of its own.
APP_SOURCE = """
    import sys

    from flask import Flask
    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    from async_scoped_session_ext import async_scoped_session, flask_scoped_session
    from async_scoped_session_ext.replicas import async_replica_sessionmaker, replica_sessionmaker


    class Base(DeclarativeBase):
        pass


    class First(Base):  # never created: only its bind matters
        __tablename__ = "asse_fork_first"
        id: Mapped[int] = mapped_column(primary_key=True)


    class Second(Base):
        __tablename__ = "asse_fork_second"
        id: Mapped[int] = mapped_column(primary_key=True)


    READ_PID = select(func.pg_backend_pid())  # a plain SELECT: read from the replica
    PID = text("select pg_backend_pid()")  # textual SQL: never the replica


    def create_app(kind, url):
        app = Flask(__name__)
        app.testing = True
        if kind == "sync":
            make, options = create_engine, {"connect_args": {"connect_timeout": 5}}
        else:
            # A query waits 5 s at most: a broken connection fails, never hangs.
            make = create_async_engine
            options = {"connect_args": {"command_timeout": 5, "timeout": 5}}
        primary, replica, first, second = (make(url, **options) for _ in range(4))
        binds = {First: first, Second: second}
        if kind == "sync":
            scoped = flask_scoped_session(replica_sessionmaker(primary, replica, binds=binds), app)

            @app.get("/pids")
            def pids():
                return {
                    "replica": scoped.scalar(READ_PID),
                    "first": scoped.scalar(PID, bind_arguments={"mapper": First}),
                    "second": scoped.scalar(PID, bind_arguments={"mapper": Second}),
                    "primary": scoped.scalar(PID),
                }

        else:
            factory = async_replica_sessionmaker(primary, replica, binds=binds)
            scoped = async_scoped_session(factory, app)

            @app.get("/pids")
            async def pids():
                return {
                    "replica": await scoped.scalar(READ_PID),
                    "first": await scoped.scalar(PID, bind_arguments={"mapper": First}),
                    "second": await scoped.scalar(PID, bind_arguments={"mapper": Second}),
                    "primary": await scoped.scalar(PID),
                }

        return app
"""

FORK_SCRIPT = (
    APP_SOURCE
    + """
    import gc
    import json

    from tests.support.forkprobe import in_forked_child

    app = create_app(sys.argv[1], sys.argv[2])


    def backend_pids():
        try:
            return app.test_client().get("/pids").json
        except Exception as error:
            return f"error: {error!r}"


    def probe():
        first = backend_pids()
        gc.collect()  # a long-lived worker collects its garbage: the parent's objects too
        return [first, backend_pids()]


    before = backend_pids()
    in_child, status = in_forked_child(probe, default=[None, None])
    after = backend_pids()
    print(json.dumps({"before": before, "child": in_child, "status": status, "after": after}))
"""
)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_forked_worker_opens_its_own_connections_for_every_engine(kind: str) -> None:
    """A worker forked after the parent used them gets its own connection for the bind,
    each binds engine and the replica; the parent's connections keep working."""
    require_postgres()
    url = postgres_url("psycopg" if kind == "sync" else "asyncpg")
    stdout = run_script(FORK_SCRIPT, kind, url, warnings=("error", "ignore::ResourceWarning"))
    result = json.loads(stdout)
    before, (in_child, again_in_child), after = result["before"], result["child"], result["after"]
    assert isinstance(before, dict) and sorted(before) == sorted(ROLES), before
    assert len(set(before.values())) == 4, f"four engines, four connections: {before}"
    assert result["status"] == 0, f"the worker failed or hung: {result}"
    assert isinstance(in_child, dict) and in_child == again_in_child, result
    shared = [role for role in ROLES if in_child[role] == before[role]]
    assert shared == [], f"the worker used the parent's pooled connection of {shared}: {result}"
    assert after == before, f"the parent's pooled connections broke in the fork: {result}"


# -- gunicorn --preload: the user's scenario -------------------------------------------------

GUNICORN_APP = (
    APP_SOURCE
    + """
    import json
    import os

    kind, url, report = os.environ["ASSE_KIND"], os.environ["ASSE_URL"], os.environ["ASSE_REPORT"]
    app = create_app(kind, url)


    @app.after_request
    def name_the_worker(response):
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response


    # The master uses every engine at import (--preload), before it forks its workers.
    with open(report, "w") as file:
        json.dump(app.test_client().get("/pids").json, file)
"""
)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker_and_pids(url: str) -> tuple[int, dict[str, t.Any]] | None:
    """The answering worker's process id and its engines' backend pids, or ``None``."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            worker = int(response.headers["X-Worker-Pid"])
            return worker, t.cast("dict[str, t.Any]", json.loads(response.read()))
    except OSError:
        return None


@pytest.mark.skipif(
    importlib.util.find_spec("gunicorn") is None, reason="gunicorn is not installed"
)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_gunicorn_preload_workers_open_their_own_connections(kind: str, tmp_path: Path) -> None:
    """``gunicorn --preload -w 3``: each worker has its own connection for every engine,
    none of them the master's."""
    require_postgres()
    (tmp_path / "forkapp.py").write_text(textwrap.dedent(GUNICORN_APP))
    report = tmp_path / "master.json"
    port = _free_port()
    env = {
        **os.environ,
        "ASSE_KIND": kind,
        "ASSE_URL": postgres_url("psycopg" if kind == "sync" else "asyncpg"),
        "ASSE_REPORT": str(report),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
    }
    command = [sys.executable, "-m", "gunicorn", "--preload", "-w", "3", "--timeout", "20"]
    server = subprocess.Popen(
        [*command, "-b", f"127.0.0.1:{port}", "forkapp:app"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    workers: dict[int, dict[str, t.Any]] = {}
    try:
        deadline = time.monotonic() + 20
        while len(workers) < 3 and time.monotonic() < deadline and server.poll() is None:
            answer = _worker_and_pids(f"http://127.0.0.1:{port}/pids")
            if answer is None:
                time.sleep(0.1)
            else:
                workers.setdefault(*answer)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            os.killpg(server.pid, signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            output, _ = server.communicate()
    log = output.decode(errors="replace")
    assert len(workers) == 3, f"not every worker answered: {workers}\n{log}"
    master = json.loads(report.read_text())
    assert sorted(master) == sorted(ROLES), master
    for role in ROLES:
        used = [master[role], *(seen[role] for seen in workers.values())]
        assert len(set(used)) == 4, f"{role}: master and workers shared a connection: {used}"
    assert "Traceback" not in log, log
