"""The app a load-test server serves: ``gunicorn 'bench.load_serve:app()'`` or hypercorn.

:mod:`bench.load` starts each server with three environment variables:

* ``ASSE_LOAD_APP``: an existing app builder, ``<module>:<variant>``, e.g. ``sync_flask:ours``
  (``bench.sync_flask.BUILDERS["ours"]``); see :data:`BUILDERS`;
* ``ASSE_LOAD_URL``: the database URL, driver included;
* ``ASSE_LOAD_TABLE``: the benchmark table's name (:func:`bench.db.databases` made it).

Every worker process calls :func:`app` once, so each has its own engine. Engines are disposed
when the worker stops: at interpreter exit for Flask, in Quart's ``after_serving`` on the loop
that owns the async pool.
"""

from __future__ import annotations

import atexit
import collections.abc as cabc
import os
from pathlib import Path

from flask import Flask
from quart import Quart

from . import flask_async_asyncpg, quart_apps, sync_flask
from .db import Databases, make_table

APP = "ASSE_LOAD_APP"
URL = "ASSE_LOAD_URL"
TABLE = "ASSE_LOAD_TABLE"

Built = sync_flask.SyncApp | quart_apps.QuartApp | flask_async_asyncpg.AsyncFlaskApp
#: The builder modules a server may use, by the name ``ASSE_LOAD_APP`` gives them.
BUILDERS: dict[str, cabc.Mapping[str, cabc.Callable[[Databases, str], Built]]] = {
    "sync_flask": sync_flask.BUILDERS,
    "quart_apps": quart_apps.BUILDERS,
    "flask_async_asyncpg": flask_async_asyncpg.BUILDERS,
}


def build(name: str, url: str, table: str) -> Built:
    """Build the app *name* (``<module>:<variant>``) on *url*, querying *table*."""
    module, _, variant = name.partition(":")
    try:
        builder = BUILDERS[module][variant]
    except KeyError:
        raise LookupError(f"{APP}={name!r}: no such builder") from None
    # The builders read only the table (its query); the URL is given to them directly.
    dbs = Databases(make_table(table), Path(os.devnull), None, "", "")
    return builder(dbs, url)


def app() -> Flask | Quart:
    """The app named by the environment, its engines disposed when the worker stops."""
    made = build(os.environ[APP], os.environ[URL], os.environ[TABLE])
    if isinstance(made, quart_apps.QuartApp):
        engines = made.engines

        @made.app.after_serving
        async def dispose() -> None:
            for engine in engines:
                await engine.dispose()

        return made.app
    atexit.register(made.close)
    return made.app
