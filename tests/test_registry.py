"""EngineRegistry, sync: the LRU order and bound, idle eviction, deferred disposal.

The tenant databases, the pool tracker and the apps that the ``test_registry_*`` modules
share are in ``tests/support/tenants.py``.
"""

from __future__ import annotations

import contextvars
import threading
import typing as t

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from async_scoped_session_ext import EngineRegistry, flask_scoped_session

from .support import tenants
from .support.tenants import (
    Note,
    PoolTracker,
    Tenants,
    closed_everything,
    flask_app,
    post,
)

pg_tenants = tenants.pg_tenants
sync_tenants = tenants.sync_tenants

# -- sync: LRU, eviction, deferred disposal --------------------------------------------


def test_lru_order_bound_and_idle_eviction(sync_tenants: Tenants) -> None:
    """The least recently used key goes first; an idle evicted engine is disposed at once."""
    tracker = PoolTracker()
    registry = EngineRegistry(sync_tenants.url, max_engines=2)
    app = flask_app(registry, tracker)
    try:
        for tenant in ("t0", "t1", "t0", "t2"):
            assert post(app, tenant) == [tenant]
        assert registry.keys() == ["t0", "t2"]
        assert (registry.created, registry.disposed, len(registry)) == (3, 1, 2)
        assert tracker.closed["t1"] == tracker.opened["t1"] == 1  # its pool, closed
        assert tracker.closed["t0"] == 0
        assert repr(registry) == "<EngineRegistry 2/2 [t0, t2]>"

        assert post(app, "t1") == ["t1"]  # back, with a new engine; t0 goes now
        assert registry.keys() == ["t2", "t1"]
        assert (registry.created, registry.disposed) == (4, 2)
        assert tracker.closed["t0"] == tracker.opened["t0"]
    finally:
        closed_everything(registry, tracker)


def test_busy_engine_disposal_waits_for_its_context(sync_tenants: Tenants) -> None:
    """An evicted engine with a session open in a live context is disposed once it ends."""
    tracker = PoolTracker()
    registry = EngineRegistry(sync_tenants.url, max_engines=2)
    app = flask_app(registry, tracker)
    try:
        with app.app_context():
            session = tracker.sync(registry, "t0")
            session.add(Note(tenant="t0"))
            session.flush()  # a transaction is open: a connection is checked out
            post(app, "t1")
            post(app, "t2")  # evicts t0, which is busy
            assert registry.keys() == ["t1", "t2"]
            assert (registry.created, registry.disposed, len(registry)) == (3, 0, 3)
            assert registry.reap() == 1
            assert tracker.closed["t0"] == 0
            session.commit()  # the busy session keeps working
            assert set(session.scalars(select(Note.tenant))) == {"t0"}
        # the teardown closed the session as usual; the next registry[key] disposes t0
        assert tracker.closed["t0"] == 0
        registry["t1"]
        assert (registry.disposed, len(registry)) == (1, 2)
        assert tracker.closed["t0"] == tracker.opened["t0"] == 1
    finally:
        closed_everything(registry, tracker)


def test_checked_out_connection_defers_disposal(sync_tenants: Tenants) -> None:
    """Outside any context, a connection checked out of an evicted engine defers disposal."""
    tracker = PoolTracker()
    registry = EngineRegistry(sync_tenants.url, max_engines=1)
    scoped = t.cast("flask_scoped_session[Session]", registry["t0"])
    tracker.watch(scoped, "t0")
    try:
        with scoped.fresh() as session:
            session.execute(select(Note.id))
            registry["t1"]  # evicts t0 while its connection is checked out
            assert (registry.disposed, registry.reap()) == (0, 1)
            session.execute(select(Note.id))  # still works
        assert registry.reap() == 0
        assert registry.disposed == 1 and tracker.closed["t0"] == tracker.opened["t0"] == 1
    finally:
        closed_everything(registry, tracker)


def test_scoped_session_outlives_eviction_within_its_context(sync_tenants: Tenants) -> None:
    """``registry[key]`` opens the context's session, so eviction cannot pull the engine away.

    Asking again for the evicted key in that context brings back the same engine and session.
    """
    tracker = PoolTracker()
    registry = EngineRegistry(sync_tenants.url, max_engines=2)
    app = flask_app(registry, tracker)
    try:
        with app.app_context():
            scoped = t.cast("flask_scoped_session[Session]", registry["t0"])
            tracker.watch(scoped, "t0")
            session = scoped()
            post(app, "t1")
            post(app, "t2")  # t0 is evicted before its session was ever used
            assert scoped.execute(select(Note.id)).all() == []
            assert registry["t0"] is scoped and scoped() is session
            assert registry.created == 3  # no second engine for t0
            assert registry.keys() == ["t2", "t0"]
        registry.reap()
        assert registry.disposed == 1  # t1, idle once its request ended
    finally:
        closed_everything(registry, tracker)


def test_registry_in_a_thread_that_outlives_its_request(sync_tenants: Tenants) -> None:
    """After its request ended, a thread started in it still gets ``registry[key]``.

    Using that context's session then raises the library's "torn down" error (a session
    opened there would never be closed), and ``fresh()`` works as the error says.
    """
    tracker = PoolTracker()
    registry = EngineRegistry(sync_tenants.url, max_engines=1)
    app = flask_app(registry, tracker)
    request_ended = threading.Event()
    outcome: dict[str, t.Any] = {}

    def late_work() -> None:
        assert request_ended.wait(10)
        scoped = t.cast("flask_scoped_session[Session]", registry["t1"])  # made now: no error
        tracker.watch(scoped, "t1")
        try:
            scoped()
        except RuntimeError as error:
            outcome["error"] = str(error)
        with scoped.fresh() as session:
            session.add(Note(tenant="t1"))
            session.commit()
            outcome["seen"] = list(session.scalars(select(Note.tenant)))

    threads: list[threading.Thread] = []

    @app.post("/later")
    def later() -> str:
        # The thread runs in a copy of the request's context, app context included.
        threads.append(threading.Thread(target=contextvars.copy_context().run, args=(late_work,)))
        threads[0].start()
        return "started"

    try:
        assert app.test_client().post("/later").text == "started"
        request_ended.set()
        threads[0].join(timeout=10)
        assert "is torn down (or being torn down)" in outcome["error"]
        assert outcome["seen"] == ["t1"]
        assert (registry.keys(), registry.created, registry.reap()) == (["t1"], 1, 0)
    finally:
        closed_everything(registry, tracker)
    assert tracker.closed["t1"] == tracker.opened["t1"] == 1


@pytest.mark.parametrize("max_engines", [0, -1])
def test_max_engines_below_one_is_refused(max_engines: int) -> None:
    """A registry must be able to hold the engine of the key it was just asked for."""
    with pytest.raises(ValueError, match=rf"^max_engines must be at least 1, not {max_engines}\.$"):
        EngineRegistry(max_engines=max_engines)
