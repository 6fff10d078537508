"""How a test's isolation rebinds an app's session factories to its own connections."""

from __future__ import annotations

import typing as t

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from ._app import AppState
from ._engines import ASYNC_CONFIG_KEY, SYNC_CONFIG_KEY

if t.TYPE_CHECKING:
    from flask.sansio.app import App

AnyEngine = Engine | AsyncEngine
AnyFactory = sessionmaker[t.Any] | async_sessionmaker[t.Any]


def app_factories(app: App, state: AppState) -> dict[t.Any, AnyFactory]:
    """The session factory of each scoped session of *app*, as it is without a test."""
    factories: dict[t.Any, AnyFactory] = {}
    for scoped in state.scoped:
        factory: object = getattr(scoped, "_session_factory", None)
        if factory is None:
            key = ASYNC_CONFIG_KEY if scoped.is_async else SYNC_CONFIG_KEY
            if scoped.name not in (app.config.get(key) or {}):
                continue  # no engine in this app, so nothing to isolate
            factory = state.engines.factory(scoped.name, scoped.is_async, scoped.session_options)
        if not isinstance(factory, sessionmaker | async_sessionmaker):
            raise TypeError(
                f"{scoped!r} makes its sessions with {factory!r}, which is not a"
                " sessionmaker, so its sessions cannot be bound to the test's transaction."
                " Pass a sessionmaker(...) (or async_sessionmaker(...)) to the scoped"
                " session."
            )
        factories[scoped] = factory
    return factories


_E = t.TypeVar("_E", Engine, AsyncEngine)


def engines_of(factories: dict[t.Any, AnyFactory], kind: type[_E]) -> list[_E]:
    """The engines of kind *kind* the factories bind to, each once, in order."""
    found: dict[int, _E] = {}
    for maker in factories.values():
        options: dict[str, t.Any] = maker.kw
        binds = [options.get("bind"), *(options.get("binds") or {}).values()]
        for bind in binds:
            if isinstance(bind, kind):
                found.setdefault(id(bind), bind)
    return list(found.values())


def rebound(
    factory: AnyFactory, connections: dict[AnyEngine, Connection | AsyncConnection]
) -> AnyFactory:
    """*factory*, but binding its sessions to the test's connections with savepoints."""
    kw = dict(factory.kw, join_transaction_mode="create_savepoint")
    if isinstance(kw.get("bind"), Engine | AsyncEngine):
        kw["bind"] = connections.get(kw["bind"], kw["bind"])
    if kw.get("binds"):
        kw["binds"] = {key: connections.get(bind, bind) for key, bind in kw["binds"].items()}
    if isinstance(kw.get("replica"), Engine):
        # replicas.ReplicaSession: in a test, plain reads see the test's own writes.
        primary = kw["bind"]
        kw["replica"] = primary.sync_connection if isinstance(primary, AsyncConnection) else primary
    if isinstance(factory, async_sessionmaker):
        return async_sessionmaker(class_=factory.class_, **kw)
    return sessionmaker(class_=factory.class_, **kw)


def begin_options(engine: Engine) -> dict[str, t.Any]:
    """Execution options for the test's connection before it begins its transaction.

    SQLite's drivers begin a transaction only before a write and commit on their own
    around savepoints, so the outer transaction would not hold; in driver-level
    autocommit, with ``BEGIN`` emitted by :func:`begin_on_database`, savepoints nest as they should.
    """
    return {"isolation_level": "AUTOCOMMIT"} if engine.dialect.name == "sqlite" else {}


def begin_on_database(connection: Connection) -> None:
    """Make sure the database itself is in a transaction after ``connection.begin()``."""
    if connection.dialect.name != "sqlite":
        return
    driver = connection.connection.driver_connection
    if not getattr(driver, "in_transaction", True):  # the app may emit BEGIN itself
        connection.exec_driver_sql("BEGIN")
