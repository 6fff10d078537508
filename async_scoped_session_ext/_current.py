"""The runtime of ``current_session``: the current app's default scoped session."""

from __future__ import annotations

import typing as t

from werkzeug.local import LocalProxy

from ._app import EXTENSION_KEY, AppState, get_state
from ._context import NO_APP_CONTEXT_MESSAGE
from ._frameworks import current_app_context

if t.TYPE_CHECKING:
    from ._types import ScopedLike


def current_state() -> AppState:
    """The current app's state; raises saying what is missing."""
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


def current_scoped_session() -> ScopedLike:
    """The current app's default scoped session, sync or async."""
    # The hot path of every ``current_session.<attr>``: one context lookup, one dict lookup.
    ctx = current_app_context()
    if ctx is not None:
        state: AppState | None = ctx.app.extensions.get(EXTENSION_KEY)
        if state is not None:
            scoped = state.default_session()
            if scoped is not None:
                return scoped
    current_state()  # raises the error that says what is missing, if something is
    raise AttributeError(
        "The current app has no default scoped session: its only scoped sessions belong"
        " to an EngineRegistry, and current_session never stands for one of them. Use"
        " 'registry[key]' for a key's session, or create a flask_scoped_session or"
        " async_scoped_session for the app's own database."
    )


class SessionProxy(LocalProxy):  # type: ignore[type-arg]
    """werkzeug's ``LocalProxy``, with a direct path for public attributes and calls.

    ``LocalProxy`` reaches a session attribute through ``__getattr__``, which Python calls
    only after normal lookup has failed and raised an ``AttributeError``, and then builds a
    bound lookup object: about a microsecond per ``current_session.execute``. Public names
    go straight to the scoped session here. Names starting with ``_`` (the proxy's own
    ``_get_current_object``, ``__class__``, ...) keep ``LocalProxy``'s behaviour.
    """

    __slots__ = ()

    def __getattribute__(self, name: str) -> t.Any:
        if name[0] == "_":
            return object.__getattribute__(self, name)
        return getattr(current_scoped_session(), name)

    def __getattr__(self, name: str) -> t.Any:
        # A private name the proxy itself lacks: the scoped session's, as in LocalProxy.
        return getattr(current_scoped_session(), name)

    def __call__(self, **kw: t.Any) -> t.Any:
        return current_scoped_session()(**kw)


session_proxy = SessionProxy(current_scoped_session)
"""The object behind ``current_session`` (typed there)."""


def current_of_kind(is_async: bool) -> ScopedLike:
    """The current app's default scoped session of one kind: async, or sync."""
    state = current_state()
    scoped = state.async_default if is_async else state.sync_default
    if scoped is not None:
        return scoped
    kind, view, other = (
        ("async_scoped_session", "current_async_session", "current_sync_session")
        if is_async
        else ("flask_scoped_session", "current_sync_session", "current_async_session")
    )
    raise AttributeError(
        f"The current app has no {kind}, and {view} stands for the app's default one (the"
        f" one named 'default', else the first initialised). Create a {kind} and call"
        f" 'init_app(app)' on it, or use {other} or current_session for the sessions the"
        " app has."
    )


class KindProxy(LocalProxy):  # type: ignore[type-arg]
    """The proxy behind ``current_sync_session`` / ``current_async_session``: the direct
    path of :class:`SessionProxy` for public attributes, to the default of one kind."""

    __slots__ = ()

    def __getattribute__(self, name: str) -> t.Any:
        if name[0] == "_":
            return object.__getattribute__(self, name)
        return getattr(object.__getattribute__(self, "_get_current_object")(), name)

    def __call__(self, **kw: t.Any) -> t.Any:
        return object.__getattribute__(self, "_get_current_object")()(**kw)


sync_proxy = KindProxy(lambda: current_of_kind(False))
"""The object behind ``current_sync_session`` (typed there)."""
async_proxy = KindProxy(lambda: current_of_kind(True))
"""The object behind ``current_async_session`` (typed there)."""
