"""How a test's isolation rebinds an app's session factories to its own connections."""

from __future__ import annotations

import typing as t

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import sessionmaker

from ._config import ASYNC_CONFIG_KEY, SYNC_CONFIG_KEY
from ._engines import engines_of
from ._sa_asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from ._types import AnyEngine, AnyFactory

if t.TYPE_CHECKING:
    from flask.sansio.app import App

    from ._app import AppState


def app_factories(app: App, state: AppState) -> dict[t.Any, AnyFactory]:
    """The session factory of each scoped session of *app*, as it is without a test."""
    factories: dict[t.Any, AnyFactory] = {}
    for scoped in state.scoped:
        factory: object = scoped.given_factory
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


def engines_of_kind(factories: dict[t.Any, AnyFactory], kind: type[_E]) -> list[_E]:
    """The engines of kind *kind* the factories reach (see ``engines_of``), each once.

    A ``ReplicaSession``'s replica is left out: in a test its reads go to the primary's
    connection (see :func:`rebound`), so that they see the test's own writes.
    """
    found: dict[int, _E] = {}
    for factory in factories.values():
        replica = factory.kw.get("replica")
        for engine in engines_of(factory):
            if isinstance(engine, kind) and not _is(engine, replica):
                found.setdefault(id(_core(engine)), engine)
    return list(found.values())


def _is(engine: AnyEngine, other: object) -> bool:
    if isinstance(other, list | tuple):  # several replicas
        return any(_is(engine, each) for each in other)
    return isinstance(other, Engine | AsyncEngine) and _core(engine) is _core(other)


def _core(engine: AnyEngine) -> Engine:
    return engine.sync_engine if isinstance(engine, AsyncEngine) else engine


def rebound(
    factory: AnyFactory, connections: dict[AnyEngine, Connection | AsyncConnection]
) -> AnyFactory:
    """*factory*, but binding its sessions to the test's connections with savepoints.

    Every engine among the factory's keyword arguments (``bind``, the values of ``binds``,
    a custom Session class's) is replaced by the test's connection to it.
    """
    by_core = {id(_core(engine)): connection for engine, connection in connections.items()}

    def swap(value: t.Any) -> t.Any:
        if isinstance(value, Engine | AsyncEngine):
            connection = by_core.get(id(_core(value)))
            if connection is None:
                return value
            if isinstance(value, Engine) and isinstance(connection, AsyncConnection):
                return connection.sync_connection  # a sync session class's async engine
            return connection
        return value

    kw: dict[str, t.Any] = {
        key: {k: swap(v) for k, v in value.items()} if key == "binds" and value else swap(value)
        for key, value in factory.kw.items()
    }
    kw["join_transaction_mode"] = "create_savepoint"
    if kw.get("replica") is not None and isinstance(kw.get("bind"), Connection | AsyncConnection):
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
