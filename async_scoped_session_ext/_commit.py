"""Commit on success: commit the context's session before a successful response is sent.

A scoped session created with ``commit_on_success=True`` registers an ``after_request``
function on each app it is initialised on. Both frameworks run those after the view and
before the response is sent, so a commit that fails turns the response into a 500. The
decision is the same for Flask and Quart, sync and async; only the call differs: Flask's
``ensure_sync`` runs an ``AsyncSession``'s commit on the app's (shared) loop, Quart's
``ensure_async`` runs a ``Session``'s commit in a worker thread.

A commit that fails invalidates the session's connections: the pool must not take them
back as they are. SQLite keeps the transaction open when a deferred foreign key fails at
COMMIT, and SQLAlchemy's pool, which saw the commit end the transaction, does not roll it
back: every later commit on that connection would fail too (measured). Should the
invalidation fail as well, its error is raised, with the commit's chained to it.
"""

from __future__ import annotations

import typing as t

from ._context import ContextRegistry, ensure_record, record_of
from ._frameworks import current_app_context, is_quart_app

if t.TYPE_CHECKING:
    from flask import Flask
    from flask.sansio.app import App
    from quart import Quart


class _Response(t.Protocol):
    status_code: int


_R = t.TypeVar("_R", bound=_Response)


def commit_on_success(
    app: App, registries: t.Callable[[], t.Iterable[ContextRegistry[t.Any]]]
) -> None:
    """Commit the sessions the context holds in *registries()* after each successful request.

    *registries* is called after each request: a scoped session's one registry, or those of
    an ``EngineRegistry``'s current engines (one hook for all of them, however many come
    and go).
    """
    if is_quart_app(app):
        quart_app = t.cast("Quart", app)

        async def commit_after_quart(response: _R) -> _R:
            for registry in registries():
                session = session_to_commit(registry, response)
                if session is not None:
                    try:
                        await quart_app.ensure_async(session.commit)()
                    except BaseException:
                        await quart_app.ensure_async(session.invalidate)()
                        raise
            return response

        quart_app.after_request(commit_after_quart)
        return  # Quart marks failed contexts itself (_frameworks)

    from flask.signals import got_request_exception

    flask_app = t.cast("Flask", app)

    def commit_after(response: _R) -> _R:
        for registry in registries():
            session = session_to_commit(registry, response)
            if session is not None:
                try:
                    flask_app.ensure_sync(session.commit)()
                except BaseException:
                    flask_app.ensure_sync(session.invalidate)()
                    raise
        return response

    flask_app.after_request(commit_after)
    # An unhandled exception may still end in a response < 400 (an error handler for 500
    # that says otherwise): remember the failure, as Quart's adapter does.
    got_request_exception.connect(_mark_failed, flask_app, weak=False)


def session_to_commit(registry: ContextRegistry[t.Any], response: _Response) -> t.Any:
    """The context's session of *registry* if it is to be committed now, else ``None``.

    Only when the response's status is below 400, the request raised no unhandled
    exception, and the context has a session of *registry* (none is made here).
    """
    if response.status_code >= 400:
        return None
    ctx = current_app_context()
    record = record_of(ctx) if ctx is not None else None
    if record is None or record.failed:
        return None
    return record.sessions.get(registry)


def _mark_failed(sender: object, **kwargs: object) -> None:
    ctx = current_app_context()
    if ctx is not None:
        ensure_record(ctx).failed = True
