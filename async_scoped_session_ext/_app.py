"""Per-app state: which scoped sessions an app has, and its one shared teardown."""

from __future__ import annotations

import sys
import typing as t
import weakref
from dataclasses import dataclass, field

from ._engines import AnyFactory, AppEngines
from ._runner import loop_running
from ._scope import current_app_context, scope_key
from ._teardown import flask_teardown, quart_teardown

if t.TYPE_CHECKING:
    from flask.sansio.app import App
    from quart import Quart

    from ._async import async_scoped_session
    from ._sync import flask_scoped_session

EXTENSION_KEY = "async_scoped_session_ext"


def is_quart_app(app: App) -> bool:
    """Whether *app* is a Quart app (checked without importing Quart)."""
    quart_app = sys.modules.get("quart.app")
    return quart_app is not None and isinstance(app, quart_app.Quart)


@dataclass(eq=False)
class AppState:
    """What one app knows of this library, stored in ``app.extensions``."""

    is_quart: bool
    #: The engines (and session factories) made from the app's config, lazily.
    engines: AppEngines
    scoped: list[flask_scoped_session[t.Any] | async_scoped_session[t.Any]] = field(
        default_factory=list
    )
    sync_default: flask_scoped_session[t.Any] | None = None
    async_default: async_scoped_session[t.Any] | None = None
    #: Flask only: whether the app's async code runs on the library's shared loop.
    shared_loop: bool = False
    #: Quart only: contexts whose request raised. Quart hands its teardowns ``exc=None``
    #: once an error handler has made a response of the exception.
    failed: weakref.WeakSet[t.Any] = field(default_factory=weakref.WeakSet)
    #: Scoped sessions reached only through an ``EngineRegistry``, never by name.
    unnamed: weakref.WeakSet[t.Any] = field(default_factory=weakref.WeakSet)
    #: Session factories that replace a scoped session's own in this app, while a test
    #: isolates the app's database work in a transaction (``testing.isolate``).
    overrides: dict[t.Any, AnyFactory] = field(default_factory=dict)

    def named_scoped(
        self,
    ) -> list[flask_scoped_session[t.Any] | async_scoped_session[t.Any]]:
        """The scoped sessions ``get_scoped_session`` may return."""
        return [scoped for scoped in self.scoped if scoped not in self.unnamed]

    def current_scoped(
        self,
    ) -> list[flask_scoped_session[t.Any] | async_scoped_session[t.Any]]:
        """The scoped sessions now; the list is replaced, never changed, on (un)register."""
        return self.scoped

    def default_session(
        self,
    ) -> flask_scoped_session[t.Any] | async_scoped_session[t.Any]:
        """The scoped session ``current_session`` stands for right now.

        With one kind configured, that one. With both, the async one when an event loop is
        running in this thread (Quart and Flask async views), the sync one otherwise (sync
        views, including Quart's, which run in a worker thread).
        """
        sync, async_ = self.sync_default, self.async_default  # _pick, inlined: a hot path
        if async_ is None:
            return t.cast("flask_scoped_session[t.Any]", sync)
        if sync is None:
            return async_
        return async_ if loop_running() else sync

    def session_named(
        self, name: str
    ) -> flask_scoped_session[t.Any] | async_scoped_session[t.Any] | None:
        """The scoped session called *name* (sync or async, picked as for the default)."""
        sync: flask_scoped_session[t.Any] | None = None
        async_: async_scoped_session[t.Any] | None = None
        for scoped in self.named_scoped():  # the last one initialised wins, as for the default
            if scoped.name == name:
                if scoped.is_async:
                    async_ = t.cast("async_scoped_session[t.Any]", scoped)
                else:
                    sync = t.cast("flask_scoped_session[t.Any]", scoped)
        return None if sync is None and async_ is None else _pick(sync, async_)


def _pick(
    sync: flask_scoped_session[t.Any] | None, async_: async_scoped_session[t.Any] | None
) -> flask_scoped_session[t.Any] | async_scoped_session[t.Any]:
    if async_ is None:
        return t.cast("flask_scoped_session[t.Any]", sync)
    if sync is None:
        return async_
    return async_ if loop_running() else sync


def _watch_failures(app: App, failed: weakref.WeakSet[t.Any]) -> None:
    from quart.signals import got_request_exception

    async def mark_failed(sender: App, **kwargs: object) -> None:
        ctx = current_app_context()
        if ctx is not None:
            failed.add(ctx)

    got_request_exception.connect(mark_failed, app, weak=False)


def _shell_context() -> dict[str, object]:
    """What ``flask shell`` and ``quart shell`` get: the session proxy, ready to use."""
    from ._proxy import current_session

    return {"current_session": current_session}


NOT_INITIALISED = (
    "This {kind} is not initialised on the current app {app!r}, so nothing would ever close"
    " its sessions here. Did you forget to call 'init_app(app)' in your app factory, or is"
    " this session object meant for another app?"
)


_overridden_apps = 0
"""How many apps have session factory overrides now (see :func:`set_overrides`)."""


def set_overrides(state: AppState, overrides: dict[t.Any, AnyFactory]) -> None:
    """Replace the app's session factory overrides (``{}`` restores its own factories)."""
    global _overridden_apps
    _overridden_apps += bool(overrides) - bool(state.overrides)
    state.overrides = overrides


def session_factory_for(
    scoped: flask_scoped_session[t.Any] | async_scoped_session[t.Any],
    given: AnyFactory | None,
) -> AnyFactory:
    """The factory *scoped* makes sessions with now, in the current app (if any).

    A test's override for the current app first, then the factory given to the
    constructor, then the one made from the current app's config.
    """
    if _overridden_apps:  # only while a test isolates an app: the common path skips this
        ctx = current_app_context()
        state = get_state(ctx.app) if ctx is not None else None
        override = state.overrides.get(scoped) if state is not None else None
        if override is not None:
            return override
    if given is not None:
        return given
    return configured_factory(scoped)


def configured_factory(
    scoped: flask_scoped_session[t.Any] | async_scoped_session[t.Any],
) -> AnyFactory:
    """The session factory made from the current app's config for *scoped*."""
    app = scope_key().app
    state = get_state(app)
    if state is None or not any(existing is scoped for existing in state.scoped):
        raise RuntimeError(NOT_INITIALISED.format(kind=type(scoped).__name__, app=app))
    return state.engines.factory(scoped.name, scoped.is_async, scoped.session_options)


def get_state(app: App) -> AppState | None:
    """Return the app's state, or ``None`` if no scoped session was initialised on it."""
    return t.cast("AppState | None", app.extensions.get(EXTENSION_KEY))


def ensure_state(app: App) -> AppState:
    """The app's state, made on the first call with the app's shared teardown.

    Call it while the app is being set up: Flask refuses new teardowns once it serves.
    """
    state = get_state(app)
    if state is None:
        is_quart = is_quart_app(app)
        state = AppState(is_quart=is_quart, engines=AppEngines(app, is_quart))
        app.extensions[EXTENSION_KEY] = state
        if state.is_quart:
            _watch_failures(app, state.failed)
            app.teardown_appcontext(quart_teardown(state.current_scoped, state.failed))
            t.cast("Quart", app).after_serving(state.engines.dispose)
        else:
            app.teardown_appcontext(flask_teardown(state.current_scoped))
        app.shell_context_processor(_shell_context)
    return state


def register(
    app: App,
    scoped: flask_scoped_session[t.Any] | async_scoped_session[t.Any],
    *,
    named: bool = True,
) -> AppState:
    """Attach *scoped* to *app*, registering the app's shared teardown the first time.

    With ``named=False`` (an ``EngineRegistry``'s sessions) its sessions are scoped and torn
    down as usual, but it is never the app's default nor found by ``get_scoped_session``.
    """
    state = ensure_state(app)
    if any(existing is scoped for existing in state.scoped):
        raise RuntimeError(
            f"This {type(scoped).__name__} is already initialised on {app!r}. 'init_app'"
            " must be called once per app: pass the app to the constructor or call"
            " 'init_app(app)', not both, and call it only once in your app factory."
        )
    state.scoped = [*state.scoped, scoped]  # copied, never mutated: teardowns iterate it
    if not named:
        state.unnamed.add(scoped)
        return state
    # The default is the one named "default", else the first of its kind; among several
    # named "default", the last initialised (as Flask-SQLAlchemy-Session's app.scoped_session).
    if scoped.is_async:
        if scoped.name == "default" or state.async_default is None:
            state.async_default = t.cast("async_scoped_session[t.Any]", scoped)
    elif scoped.name == "default" or state.sync_default is None:
        state.sync_default = t.cast("flask_scoped_session[t.Any]", scoped)
    return state


def unregister(app: App, scoped: flask_scoped_session[t.Any] | async_scoped_session[t.Any]) -> None:
    """Detach *scoped* from *app*: its sessions are no longer scoped or torn down there.

    Only for a scoped session none of whose sessions is still open in the app.
    """
    state = get_state(app)
    if state is None:
        return
    state.scoped = [existing for existing in state.scoped if existing is not scoped]
    if state.sync_default is scoped:
        state.sync_default = next(
            (t.cast("flask_scoped_session[t.Any]", s) for s in state.scoped if not s.is_async),
            None,
        )
    if state.async_default is scoped:
        state.async_default = next(
            (t.cast("async_scoped_session[t.Any]", s) for s in state.scoped if s.is_async), None
        )
