"""Tracking the models a session changes, to send the signals of ``signals`` at commit.

Listeners go on the session class of each session factory an app that opted in uses (a
``sessionmaker``'s own subclass; an ``async_sessionmaker`` is given one for its sync
sessions), once per factory and never on SQLAlchemy's ``Session`` class itself, so no other
factory or app pays for them. A session's changes are kept in its ``info``, collected after
each flush, cut back when a savepoint rolls back, forgotten when the transaction ends.
"""

from __future__ import annotations

import typing as t
import weakref

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from ._frameworks import current_app_context
from ._sa_asyncio import async_sessionmaker
from .signals import before_models_committed, models_committed

if t.TYPE_CHECKING:
    from flask.sansio.app import App

CONFIG_KEY = "SQLALCHEMY_TRACK_MODIFICATIONS"
_INFO_KEY = "async_scoped_session_ext.changes"

#: The sync session classes made here for async session factories.
_made: weakref.WeakSet[type[Session]] = weakref.WeakSet()
#: The session classes listened to. Not ``event.contains()``: SQLAlchemy's registry is
#: keyed by ``id()``, and answered yes for a new class at the address of a dead one.
_listening: weakref.WeakSet[type[Session]] = weakref.WeakSet()
#: The session factories tracked (their sync session class may be reconfigured).
_tracked: weakref.WeakSet[object] = weakref.WeakSet()


class _Changes:
    """One session's changes in its transaction: each flushed instance, with what was done."""

    __slots__ = ("log", "marks")

    def __init__(self) -> None:
        self.log: list[tuple[object, str]] = []
        #: How long the log was when each savepoint began.
        self.marks: dict[SessionTransaction, int] = {}

    def folded(self) -> list[tuple[object, str]]:
        """One entry per instance: inserted then changed is an insert, inserted then deleted
        is nothing, anything then deleted is a delete."""
        folded: dict[int, tuple[object, str]] = {}
        for instance, operation in self.log:
            earlier = folded.get(id(instance))  # the log holds the instances: ids are stable
            if earlier is not None and earlier[1] == "insert":
                if operation == "delete":
                    del folded[id(instance)]
                continue
            folded[id(instance)] = (instance, operation)
        return list(folded.values())


def track_changes(app: App, factory: object) -> None:
    """Send the signals for commits of the sessions *factory* makes, if *app* opted in.

    Called when the library takes charge of a factory: at ``init_app`` for a given one,
    when it is made for one made from the config.
    """
    if factory is not None and app.config.get(CONFIG_KEY):
        _listen(factory)


def keep_tracking(factory: object) -> None:
    """After *factory* was reconfigured: track its (maybe new) sync session class too."""
    if factory in _tracked:
        _listen(factory)


def _listen(factory: object) -> None:
    target = _session_class(factory)
    _tracked.add(factory)
    if target in _listening:
        return  # another app, or scoped session, already tracks this factory
    _listening.add(target)
    event.listen(target, "after_flush", _after_flush)
    event.listen(target, "after_transaction_create", _after_transaction_create)
    event.listen(target, "after_soft_rollback", _after_soft_rollback)
    event.listen(target, "after_transaction_end", _after_transaction_end)
    event.listen(target, "before_commit", _before_commit)
    event.listen(target, "after_commit", _after_commit)


def _session_class(factory: object) -> type[Session]:
    """The (sync) session class of *factory*'s sessions, its own: made for it if need be."""
    if isinstance(factory, sessionmaker):
        return t.cast("type[Session]", factory.class_)  # sessionmaker makes one per factory
    if isinstance(factory, async_sessionmaker):
        given = factory.kw.get("sync_session_class") or factory.class_.sync_session_class
        if given in _made:
            return t.cast("type[Session]", given)
        own = t.cast("type[Session]", type(given.__name__, (given,), {}))
        _made.add(own)
        factory.configure(sync_session_class=own)
        return own
    raise TypeError(
        f"SQLALCHEMY_TRACK_MODIFICATIONS is set, but the session factory {factory!r} is not"
        " a sessionmaker or async_sessionmaker, so the library cannot listen to its"
        " sessions' commits. Pass a sessionmaker(...) (or async_sessionmaker(...)), or"
        " leave SQLALCHEMY_TRACK_MODIFICATIONS unset."
    )


def _tracking_app() -> App | None:
    """The current app, if it opted in (a factory may be shared with apps that did not)."""
    ctx = current_app_context()
    if ctx is None:
        return None
    app: App = ctx.app
    return app if app.config.get(CONFIG_KEY) else None


def _after_flush(session: Session, flush_context: object) -> None:
    if _tracking_app() is None:
        return
    # Here new, dirty and deleted still hold what the flush just wrote.
    changes: _Changes = session.info.setdefault(_INFO_KEY, _Changes())
    log = changes.log
    log.extend((instance, "insert") for instance in session.new)
    log.extend((instance, "update") for instance in session.dirty if session.is_modified(instance))
    log.extend((instance, "delete") for instance in session.deleted)


def _after_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    changes: _Changes | None = session.info.get(_INFO_KEY)
    if transaction.nested and changes is not None:
        changes.marks[transaction] = len(changes.log)


def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    changes: _Changes | None = session.info.get(_INFO_KEY)
    if changes is None:
        return
    # What the database rolled back: the nearest savepoint, or the whole transaction.
    boundary = previous_transaction
    while not boundary.nested and boundary.parent is not None:
        boundary = boundary.parent
    if boundary.nested:
        del changes.log[changes.marks.get(boundary, 0) :]
    else:
        session.info.pop(_INFO_KEY, None)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_INFO_KEY, None)


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint is released: the changes are not committed yet
    app = _tracking_app()
    if app is None:
        return
    session.flush()  # the commit's own flush comes after this event: send what it writes
    changes: _Changes | None = session.info.get(_INFO_KEY)
    folded = changes.folded() if changes is not None else []
    if folded:
        before_models_committed.send(app, changes=folded)


def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    app = _tracking_app()
    changes: _Changes | None = session.info.pop(_INFO_KEY, None)
    folded = changes.folded() if changes is not None and app is not None else []
    if folded:
        models_committed.send(app, changes=folded)
