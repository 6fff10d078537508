"""``current_session``: one proxy to the current app's scoped session, sync or async."""

from __future__ import annotations

import typing as t

from werkzeug.local import LocalProxy

from ._app import AppState, get_state
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


def _current_state() -> AppState:
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
    return state


def _current_scoped_session() -> AnyScopedSession:
    state = _current_state()
    scoped: AnyScopedSession | None = state.default_session()
    if scoped is None:
        raise AttributeError(
            "The current app has no default scoped session: its only scoped sessions belong"
            " to an EngineRegistry, and current_session never stands for one of them. Use"
            " 'registry[key]' for a key's session, or create a flask_scoped_session or"
            " async_scoped_session for the app's own database."
        )
    return scoped


def get_scoped_session(name: str = "default") -> AnyScopedSession:
    """The current app's scoped session called *name* (the ``name=`` it was created with).

    Like :data:`current_session`, the async one is picked when an event loop is running in
    the thread and the app has both kinds under that name. ``get_scoped_session()`` is the
    default session itself.

    :raises KeyError: when the app has no scoped session of that name.
    """
    state = _current_state()
    if name == "default":
        return _current_scoped_session()
    scoped = state.session_named(name)
    if scoped is None:
        known = sorted({s.name for s in state.named_scoped()})
        raise KeyError(
            f"The current app has no scoped session named {name!r}; it has {known!r}."
            f" Create one with flask_scoped_session(name={name!r}) or"
            f" async_scoped_session(name={name!r}) and call 'init_app(app)' on it."
        )
    return scoped


current_session = t.cast(CurrentSession, LocalProxy(_current_scoped_session))
"""The current app's scoped session, resolved on every access.

``await current_session.execute(...)`` in Quart and async views, ``current_session.query(...)``
in sync Flask. ``current_session._get_current_object()`` is the scoped session itself and
calling ``current_session()`` returns the context's session.
"""
