"""``current_session``: one proxy to the current app's scoped session, sync or async."""

from __future__ import annotations

import typing as t

from werkzeug.local import LocalProxy

from ._app import get_state
from ._scope import NO_APP_CONTEXT_MESSAGE, current_app_context

if t.TYPE_CHECKING:
    from ._async import async_scoped_session
    from ._sync import flask_scoped_session

    AnyScopedSession: t.TypeAlias = flask_scoped_session[t.Any] | async_scoped_session[t.Any]


class CurrentSession(t.Protocol):
    """The type of :data:`current_session`: any scoped-session attribute, resolved late."""

    def _get_current_object(self) -> AnyScopedSession: ...

    def __call__(self, **kw: t.Any) -> t.Any: ...

    def __getattr__(self, name: str) -> t.Any: ...


def _current_scoped_session() -> AnyScopedSession:
    ctx = current_app_context()
    if ctx is None:
        raise RuntimeError(NO_APP_CONTEXT_MESSAGE)
    app = ctx.app
    state = get_state(app)
    if state is None:
        raise AttributeError(
            f"{app!r} has no 'scoped_session' attribute: no scoped session was initialised"
            " on this app. Create one with flask_scoped_session(session_factory, app) or"
            " async_scoped_session(session_factory, app), or call 'init_app(app)' on it in"
            " your app factory."
        )
    return state.default_session()


current_session = t.cast(CurrentSession, LocalProxy(_current_scoped_session))
"""The current app's scoped session, resolved on every access.

``await current_session.execute(...)`` in Quart and async views, ``current_session.query(...)``
in sync Flask. ``current_session._get_current_object()`` is the scoped session itself and
calling ``current_session()`` returns the context's session.
"""
