"""Transactional tests: every session of an app joins a transaction rolled back at the end.

SQLAlchemy's "joining a session into an external transaction" recipe, applied to every
scoped session of an app at once::

    with isolate(app) as db:          # Flask (sync views and async views)
        app.test_client().post("/users", json={"name": "ada"})   # the view commits
        assert db.session().scalar(select(func.count(User.id))) == 1
    # rolled back: the next test sees an empty table

    async with aisolate(app) as db:   # Quart (and Flask, from async tests)
        ...

For each engine the app's scoped sessions are bound to, one connection is opened and a
transaction begun on it; while isolated, every session the app makes (in requests, in
pushed app contexts, with ``fresh()``) is bound to that connection with
``join_transaction_mode="create_savepoint"``, so its ``commit()`` releases a savepoint and
its ``rollback()`` rolls back to one, and the outer transaction is rolled back at the end,
also when the test fails. On SQLite, whose drivers do not begin transactions the way
savepoints need, the connection is switched to driver-level autocommit and ``BEGIN`` is
emitted explicitly.

``async_scoped_session_ext.fixtures`` (the pytest plugin) wraps this in fixtures.
"""

from __future__ import annotations

import contextlib
import logging
import typing as t

from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.orm import Session

from ._app import AppState, get_state, set_overrides
from ._rebind import (
    app_factories,
    begin_on_database,
    begin_options,
    engines_of_kind,
    rebound,
)
from ._runner import runner
from ._sa_asyncio import AsyncConnection, AsyncEngine, AsyncSession, AsyncTransaction
from ._types import AnyEngine, AnyFactory

if t.TYPE_CHECKING:
    from flask.sansio.app import App

__all__ = ["Isolation", "aisolate", "isolate"]

_T = t.TypeVar("_T")
logger: logging.Logger = logging.getLogger("async_scoped_session_ext")


class Isolation:
    """One app's database work in one test, inside transactions rolled back at the end.

    Made by :func:`isolate` or :func:`aisolate`; do not create it yourself.
    """

    def __init__(self, app: App, state: AppState) -> None:
        self.app = app
        self._state = state
        self._factories = app_factories(app, state)
        self._connections: dict[AnyEngine, Connection | AsyncConnection] = {}
        self._transactions: list[RootTransaction | AsyncTransaction] = []
        self._sessions: list[Session | AsyncSession] = []

    @property
    def connections(self) -> list[Connection | AsyncConnection]:
        """The connections whose transactions every session of the app joins."""
        return list(self._connections.values())

    def session(self, **kw: t.Any) -> Session:
        """A new ``Session`` in the test's transaction, closed when the isolation ends.

        It is made like the app's default ``flask_scoped_session``'s sessions (so the test
        sees what the app's views wrote and the other way round); keyword arguments go to
        its factory.
        """
        factory = self._factory(self._state.sync_default, "flask_scoped_session")
        session = t.cast(Session, factory(**kw))
        self._sessions.append(session)
        return session

    def async_session(self, **kw: t.Any) -> AsyncSession:
        """A new ``AsyncSession`` in the test's transaction, closed when the isolation ends.

        Made like the app's default ``async_scoped_session``'s sessions. In a Quart app,
        await it in the test (on the test's event loop). In a Flask app, its connection
        lives on the library's shared loop: use it through :meth:`run`.
        """
        factory = self._factory(self._state.async_default, "async_scoped_session")
        session = t.cast(AsyncSession, factory(**kw))
        self._sessions.append(session)
        return session

    def _factory(self, scoped: object, kind: str) -> AnyFactory:
        factory = self._state.overrides.get(scoped) if scoped is not None else None
        if factory is None:
            raise RuntimeError(
                f"The app {self.app!r} has no {kind} with an engine (none was initialised"
                " on it, or its engine is not in the app's config), so there is no session"
                " factory to make this test's session with."
            )
        return factory

    def run(self, coro: t.Coroutine[t.Any, t.Any, _T]) -> _T:
        """Flask only: run *coro* on the shared loop, where the app's async sessions live.

        For sync tests of Flask async views: ``db.run(db.async_session().scalar(...))``.
        """
        if self._state.is_quart:
            coro.close()
            raise RuntimeError(
                "Isolation.run() is for Flask apps, whose async sessions live on the"
                " library's shared event loop. In a Quart app the test's event loop is the"
                " app's: make the test 'async def' and await the coroutine."
            )
        return runner.run(coro)

    # Opening: sync engines here, async ones on the loop their sessions will run on.

    def _open_sync(self) -> None:
        for engine in engines_of_kind(self._factories, Engine):
            connection = engine.connect()
            self._connections[engine] = connection
            connection.execution_options(**begin_options(engine))
            self._transactions.append(connection.begin())
            begin_on_database(connection)

    async def _open_async(self) -> None:
        for engine in engines_of_kind(self._factories, AsyncEngine):
            connection = await engine.connect()
            self._connections[engine] = connection
            await connection.execution_options(**begin_options(engine.sync_engine))
            self._transactions.append(await connection.begin())
            await connection.run_sync(begin_on_database)

    def _install(self) -> None:
        set_overrides(
            self._state,
            {
                scoped: rebound(factory, self._connections)
                for scoped, factory in self._factories.items()
            },
        )

    # Closing never stops halfway: every step runs, and what failed is raised at the end.

    def _close_sync(self, errors: list[Exception]) -> None:
        set_overrides(self._state, {})
        for session in self._sessions:
            if isinstance(session, Session):
                _collect(errors, session.close)
        for transaction in self._transactions:
            if isinstance(transaction, RootTransaction):
                _collect(errors, transaction.rollback)
        for engine, connection in self._connections.items():
            if isinstance(connection, Connection):
                _collect(errors, connection.close)
                if self._owns(engine):
                    _collect(errors, t.cast(Engine, engine).dispose)

    async def _close_async(self, errors: list[Exception]) -> None:
        set_overrides(self._state, {})
        for session in self._sessions:
            if isinstance(session, AsyncSession):
                await _acollect(errors, session.close())
        for transaction in self._transactions:
            if isinstance(transaction, AsyncTransaction):
                await _acollect(errors, transaction.rollback())
        for engine, connection in self._connections.items():
            if isinstance(connection, AsyncConnection):
                await _acollect(errors, connection.close())
                # On Quart the connections belong to this test's event loop: none may be
                # pooled for a later test, which may run on another loop.
                if self._state.is_quart or self._owns(engine):
                    await _acollect(errors, t.cast(AsyncEngine, engine).dispose())

    def _owns(self, engine: AnyEngine) -> bool:
        """Whether *engine* was made from the app's config (so it ends with the app)."""
        return any(engine is created for created in self._state.engines.created())


def _collect(errors: list[Exception], step: t.Callable[[], object]) -> None:
    try:
        step()
    except Exception as error:
        errors.append(error)


async def _acollect(errors: list[Exception], step: t.Awaitable[object]) -> None:
    try:
        await step
    except Exception as error:
        errors.append(error)


def _finish(errors: list[Exception], failing: bool) -> None:
    """Raise what went wrong while ending an isolation, unless the test already failed."""
    if not errors:
        return
    if failing:  # never hide the test's own error: log ours
        for error in errors:
            logger.error("Ending a test's isolation failed.", exc_info=error)
        return
    if len(errors) == 1:
        raise errors[0]
    raise ExceptionGroup("Ending a test's isolation failed.", errors)


def _start(app: App) -> Isolation:
    state = get_state(app)
    if state is None:
        raise RuntimeError(
            f"No scoped session is initialised on {app!r}, so there is nothing to isolate."
            " Create flask_scoped_session(...) or async_scoped_session(...) with the app, or"
            " call their init_app(app) in the app factory, before isolating it."
        )
    if state.overrides:
        raise RuntimeError(f"{app!r} is already isolated; isolate an app once at a time.")
    return Isolation(app, state)


@contextlib.contextmanager
def isolate(app: App) -> t.Iterator[Isolation]:
    """Run everything *app*'s sessions do inside transactions rolled back at the end.

    For Flask apps: sync sessions directly, async ones on the library's shared loop. For a
    Quart app with async sessions use :func:`aisolate` in an async test.
    """
    isolation = _start(app)
    has_async = bool(engines_of_kind(isolation._factories, AsyncEngine))
    if has_async:
        if isolation._state.is_quart:
            raise TypeError(
                f"{app!r} is a Quart app with async sessions, whose connections must be"
                " opened on the test's event loop: use 'async with aisolate(app)' in an"
                " async test (or the plugin's fixtures, which do)."
            )
        if isolation._state.shared_loop is False:
            raise RuntimeError(
                f"{app!r} runs its async views with shared_loop=False, so its async"
                " sessions have no one event loop to open the test's connections on."
                " Keep the default shared_loop=True to test it with isolate()."
            )
    errors: list[Exception] = []
    failing = True  # until the block has run: opening may fail too
    try:
        isolation._open_sync()
        if has_async:  # on the shared loop, where the app's async views run
            runner.run(isolation._open_async())
        isolation._install()
        yield isolation
        failing = False
    finally:
        isolation._close_sync(errors)
        if has_async:  # an async session needs an async engine, so none exists otherwise
            runner.run(isolation._close_async(errors))
        _finish(errors, failing)


@contextlib.asynccontextmanager
async def aisolate(app: App) -> t.AsyncIterator[Isolation]:
    """:func:`isolate` for async tests: a Quart app's connections open on the test's loop.

    For a Flask app it does what :func:`isolate` does (async sessions on the shared loop).
    """
    isolation = _start(app)
    if not isolation._state.is_quart:
        with isolate(app) as flask_isolation:  # runs on the shared loop, not this one
            yield flask_isolation
        return
    errors: list[Exception] = []
    failing = True  # until the block has run: opening may fail too
    try:
        isolation._open_sync()
        await isolation._open_async()
        isolation._install()
        yield isolation
        failing = False
    finally:
        isolation._close_sync(errors)
        await isolation._close_async(errors)
        _finish(errors, failing)
