"""The apps of docs/deployment.md with probes added, for the servers the deployment tests run.

``gunicorn ... tests.support.deploy_probes:app`` serves the app named by ``ASSE_DEPLOY_APP``
(``flask_app``: ``deploy_flask.app``; ``flask_async_app``, ``quart_app``: the others), plus:

- ``GET /probe/hold?parties=N``: use the session, then wait until *N* requests of this worker
  hold theirs at once; answer the session's ``id()``, the backend's pid and the worker's pid.
- ``GET /probe/work?sleep=S``: hold a connection for *S* seconds (``pg_sleep``).
- ``GET /probe/stats``: the worker's pid and how many connections its pool has checked out.

Every pool connection opened or closed, in any process, is appended to the file named by
``ASSE_DEPLOY_EVENTS`` as ``"<pid> connect"`` or ``"<pid> close"``: a worker that shuts down
gracefully closes every connection it opened; one that dies leaves that to the OS.

With ``ASSE_DEPLOY_PGBOUNCER`` set, ``DATABASE_URL`` is a PgBouncer in transaction mode and
the app's engine options are changed before its first use (:func:`_behind_pgbouncer`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import typing as t

from sqlalchemy import event, text
from sqlalchemy.pool import Pool

from async_scoped_session_ext import current_session

if t.TYPE_CHECKING:
    from flask import Flask
    from quart import Quart

WAIT = 10.0  # seconds a request waits for the others at the barrier
BACKEND_PID = text("select pg_backend_pid()")


def _record(what: str) -> None:
    with open(os.environ["ASSE_DEPLOY_EVENTS"], "a") as file:  # one short append: atomic
        file.write(f"{os.getpid()} {what}\n")


@event.listens_for(Pool, "connect")
def _on_connect(dbapi_connection: object, record: object) -> None:
    _record("connect")


@event.listens_for(Pool, "close")
def _on_close(dbapi_connection: object, record: object) -> None:
    _record("close")


_lock = threading.Lock()
_thread_barriers: dict[int, threading.Barrier] = {}
_task_barriers: dict[int, asyncio.Barrier] = {}


def _thread_barrier(parties: int) -> threading.Barrier:
    with _lock:
        return _thread_barriers.setdefault(parties, threading.Barrier(parties, timeout=WAIT))


def _task_barrier(parties: int) -> asyncio.Barrier:
    return _task_barriers.setdefault(parties, asyncio.Barrier(parties))


def _add_sync_probes(app: Flask) -> None:
    from flask import request

    @app.get("/probe/hold")
    def hold() -> dict[str, int]:
        backend = current_session.scalar(BACKEND_PID)
        session = id(current_session())
        _thread_barrier(int(request.args["parties"])).wait()
        return {"session": session, "backend": backend, "worker": os.getpid()}

    @app.get("/probe/work")
    def work() -> dict[str, int]:
        current_session.execute(text("select pg_sleep(:s)"), {"s": float(request.args["sleep"])})
        return {"worker": os.getpid()}

    @app.get("/probe/stats")
    def stats() -> dict[str, int]:
        return {"worker": os.getpid(), "checked_out": current_session.get_bind().pool.checkedout()}


def _add_async_probes(app: Flask | Quart, args: t.Callable[[], t.Mapping[str, str]]) -> None:
    @app.get("/probe/hold")
    async def hold() -> dict[str, int]:
        backend = await current_session.scalar(BACKEND_PID)
        session = id(current_session())
        barrier = _task_barrier(int(args()["parties"]))
        await asyncio.wait_for(barrier.wait(), WAIT)
        return {"session": session, "backend": backend, "worker": os.getpid()}

    @app.get("/probe/work")
    async def work() -> dict[str, int]:
        sleep = float(args()["sleep"])
        await current_session.execute(text("select pg_sleep(:s)"), {"s": sleep})
        return {"worker": os.getpid()}

    @app.get("/probe/stats")
    async def stats() -> dict[str, int]:
        return {"worker": os.getpid(), "checked_out": current_session.get_bind().pool.checkedout()}


def _name_the_worker(response: t.Any) -> t.Any:
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


def _behind_pgbouncer(app: Flask | Quart, how: str) -> None:
    """Engine options for PgBouncer's transaction mode, as docs/scaling-out.md gives them.

    *how* is ``"preset"``: asyncpg engines get :func:`transaction_mode`'s options, psycopg
    engines ``prepare_threshold=None`` (psycopg prepares a statement run 5 times on a
    connection, which another server connection then lacks). ``"named"``: the preset with
    its UUID statement names, as on asyncpg < 0.31, which leaves statements on the server.
    ``"defaults"``: the app's options unchanged (the control).
    """
    if how == "defaults":
        return
    from async_scoped_session_ext.pgbouncer import statement_name, transaction_mode

    for key in ("SQLALCHEMY_ASYNC_ENGINES", "SQLALCHEMY_ENGINES"):
        for name, options in app.config.get(key, {}).items():
            options = dict(options)
            connect_args = dict(options.pop("connect_args", {}))
            if key == "SQLALCHEMY_ENGINES":
                connect_args["prepare_threshold"] = None
                app.config[key][name] = {**options, "connect_args": connect_args}
                continue
            if how == "named":
                connect_args["prepared_statement_name_func"] = statement_name
            url = options.pop("url")
            app.config[key][name] = transaction_mode(url, **options, connect_args=connect_args)


def _probed_app(name: str) -> Flask | Quart:
    app = _probed(name)
    how = os.environ.get("ASSE_DEPLOY_PGBOUNCER")
    if how:
        _behind_pgbouncer(app, how)
    return app


@functools.cache
def _probed(name: str) -> Flask | Quart:
    if name == "flask_app":
        from . import deploy_flask

        _add_sync_probes(deploy_flask.app)
        deploy_flask.app.after_request(_name_the_worker)
        return deploy_flask.app
    if name == "flask_async_app":
        from flask import request as flask_request

        from . import deploy_flask_async

        _add_async_probes(deploy_flask_async.app, lambda: flask_request.args)
        deploy_flask_async.app.after_request(_name_the_worker)
        return deploy_flask_async.app
    from quart import request as quart_request

    from . import deploy_quart

    _add_async_probes(deploy_quart.app, lambda: quart_request.args)

    @deploy_quart.app.after_request
    async def name_the_worker(response: t.Any) -> t.Any:
        return _name_the_worker(response)

    return deploy_quart.app


#: The app named by ``ASSE_DEPLOY_APP``: ``flask_app``, ``flask_async_app`` or ``quart_app``.
app = _probed_app(os.environ["ASSE_DEPLOY_APP"])
