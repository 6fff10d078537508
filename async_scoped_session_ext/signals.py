"""Signals sent when a session of the library commits changed models.

The same two signals as Flask-SQLAlchemy's (``flask_sqlalchemy.track_modifications``), for
sync and async sessions, in Flask and Quart apps. An app opts in with
``app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = True``, set before ``init_app``; see
:doc:`signals-and-commits`. Receivers are plain functions, called inside the commit.
"""

from __future__ import annotations

from blinker import NamedSignal, Namespace

__all__ = ["before_models_committed", "models_committed"]

_signals = Namespace()

before_models_committed: NamedSignal = _signals.signal("before-models-committed")
"""Sent when a session of an app that opted in is about to commit changed models.

The sender is the app of the current app context; the receiver gets ``changes``, a list of
``(instance, operation)`` tuples, ``operation`` one of ``"insert"``, ``"update"`` and
``"delete"``. The session has flushed them, and the transaction is still open: a receiver
may read the instances (and change more; those changes are committed too).
"""

models_committed: NamedSignal = _signals.signal("models-committed")
"""Sent after a session of an app that opted in committed changed models.

The same arguments as :data:`before_models_committed`. The transaction is over: with the
default ``expire_on_commit=True`` the instances are expired, and reading an attribute loads
it again (a query, in a new transaction); read what you need in
:data:`before_models_committed` instead.
"""
