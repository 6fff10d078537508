"""Per-app state: the app's framework, its scoped sessions, and its app-wide settings."""

from __future__ import annotations

import typing as t
import weakref
from dataclasses import dataclass, field

from ._cli import add_cli
from ._engines import AppEngines
from ._frameworks import Framework, current_app_context, framework_of
from ._runner import loop_running, runner

if t.TYPE_CHECKING:
    from flask import Flask
    from flask.sansio.app import App
    from quart import Quart

    from ._types import AnyFactory, ScopedLike

EXTENSION_KEY = "async_scoped_session_ext"

NOT_INITIALISED = (
    "This {kind} is not initialised on the current app {app!r}, so nothing would ever close"
    " its sessions here. Did you forget to call 'init_app(app)' in your app factory, or is"
    " this session object meant for another app?"
)


@dataclass(eq=False)
class AppState:
    """What one app knows of this library, stored in ``app.extensions``."""

    framework: Framework
    #: The engines (and session factories) made from the app's config, lazily.
    engines: AppEngines
    #: Every scoped session initialised on the app; replaced, never changed, on (un)register.
    scoped: tuple[ScopedLike, ...] = ()
    #: The same as a set, for the membership test on each new session.
    members: frozenset[ScopedLike] = frozenset()
    #: The named sync scoped sessions: each teardown calls their ``remove()``.
    removers: tuple[ScopedLike, ...] = ()
    sync_default: ScopedLike | None = None
    async_default: ScopedLike | None = None
    #: Flask only: whether the app's async code runs on the library's shared loop; set
    #: once, by the first async scoped session (or async engine registry) initialised.
    shared_loop: bool | None = None
    #: Scoped sessions reached only through an ``EngineRegistry``, never by name.
    unnamed: weakref.WeakSet[t.Any] = field(default_factory=weakref.WeakSet)
    #: Session factories that replace a scoped session's own in this app, while a test
    #: isolates the app's database work in a transaction (``testing.isolate``).
    overrides: dict[t.Any, AnyFactory] = field(default_factory=dict)

    #: Whether the app is a Quart app (the framework's, copied: read on every access).
    is_quart: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_quart = self.framework.is_quart

    def named_scoped(self) -> list[ScopedLike]:
        """The scoped sessions ``get_scoped_session`` may return."""
        return [scoped for scoped in self.scoped if scoped not in self.unnamed]

    def default_session(self) -> ScopedLike | None:
        """The scoped session ``current_session`` stands for right now.

        With one kind configured, that one. With both, the async one when an event loop is
        running in this thread (Quart and Flask async views), the sync one otherwise (sync
        views, including Quart's, which run in a worker thread).
        """
        if self.async_default is None:  # a sync app: the common path, no call
            return self.sync_default
        return _pick(self.sync_default, self.async_default)

    def session_named(self, name: str) -> ScopedLike | None:
        """The scoped session called *name* (sync or async, picked as for the default)."""
        sync: ScopedLike | None = None
        async_: ScopedLike | None = None
        for scoped in self.named_scoped():  # the last one initialised wins, as for the default
            if scoped.name == name:
                if scoped.is_async:
                    async_ = scoped
                else:
                    sync = scoped
        return _pick(sync, async_)


def _pick(sync: ScopedLike | None, async_: ScopedLike | None) -> ScopedLike | None:
    if async_ is None:
        return sync
    if sync is None:
        return async_
    return async_ if loop_running() else sync


def get_state(app: App) -> AppState | None:
    """Return the app's state, or ``None`` if nothing of this library was initialised on it."""
    return t.cast("AppState | None", app.extensions.get(EXTENSION_KEY))


def ensure_state(app: App) -> AppState:
    """The app's state, made on the first call with the app's teardown and signal receivers.

    Call it while the app is being set up: Flask refuses new teardowns once it serves.
    """
    state = get_state(app)
    if state is None:
        framework = framework_of(app)
        state = AppState(framework=framework, engines=AppEngines(app, framework.is_quart))
        framework.install(app, state)
        add_cli(app)  # the 'db' commands (SQLALCHEMY_CLI_GROUP)
        if framework.is_quart:
            t.cast("Quart", app).after_serving(state.engines.dispose)
        app.extensions[EXTENSION_KEY] = state
    return state


def use_shared_loop(app: App, state: AppState, enabled: bool) -> None:
    """Set the app-wide ``shared_loop`` setting of a Flask app (Quart apps ignore it).

    The first async scoped session (or async ``EngineRegistry``) initialised on the app sets
    it; a later one that asks for the other value raises instead of silently winning.
    """
    if state.is_quart:
        return
    if state.shared_loop is None:
        state.shared_loop = enabled
        if enabled:
            t.cast("Flask", app).async_to_sync = runner.async_to_sync  # type: ignore[method-assign]
    elif state.shared_loop != enabled:
        raise RuntimeError(
            f"{app!r} already runs its async code with shared_loop={state.shared_loop}, set by"
            f" an async scoped session initialised before; this one asks for"
            f" shared_loop={enabled}. The setting is app-wide (it decides which event loop"
            " runs every async view): give every async_scoped_session of the app the same"
            " shared_loop value."
        )


def register(app: App, scoped: ScopedLike, *, named: bool = True) -> AppState:
    """Attach *scoped* to *app*, registering the app's teardown the first time.

    With ``named=False`` (an ``EngineRegistry``'s sessions) its sessions are scoped and torn
    down as usual, but it is never the app's default nor found by ``get_scoped_session``.
    """
    state = ensure_state(app)
    if scoped in state.members:
        raise RuntimeError(
            f"This {type(scoped).__name__} is already initialised on {app!r}. 'init_app'"
            " must be called once per app: pass the app to the constructor or call"
            " 'init_app(app)', not both, and call it only once in your app factory."
        )
    state.scoped = (*state.scoped, scoped)
    state.members = frozenset(state.scoped)
    if not named:
        state.unnamed.add(scoped)
        return state
    if not scoped.is_async:
        state.removers = (*state.removers, scoped)
    # The default is the one named "default", else the first of its kind; among several
    # named "default", the last initialised (as Flask-SQLAlchemy-Session's app.scoped_session).
    if scoped.is_async:
        if scoped.name == "default" or state.async_default is None:
            state.async_default = scoped
    elif scoped.name == "default" or state.sync_default is None:
        state.sync_default = scoped
    return state


def unregister(app: App, scoped: ScopedLike) -> None:
    """Detach an ``EngineRegistry``'s *scoped* from *app* (none of its sessions is open).

    *app* has its state: the registry's ``init_app`` made it, and nothing removes it.
    """
    state = ensure_state(app)
    state.scoped = tuple(existing for existing in state.scoped if existing is not scoped)
    state.members = frozenset(state.scoped)


def is_initialised(app: App, scoped: ScopedLike) -> bool:
    """Whether *scoped* was initialised on *app*."""
    state = get_state(app)
    return state is not None and scoped in state.members


_overridden_apps = 0
"""How many apps have session factory overrides now (see :func:`set_overrides`)."""


def set_overrides(state: AppState, overrides: dict[t.Any, AnyFactory]) -> None:
    """Replace the app's session factory overrides (``{}`` restores its own factories)."""
    global _overridden_apps
    _overridden_apps += bool(overrides) - bool(state.overrides)
    state.overrides = overrides


def session_factory_for(scoped: ScopedLike) -> t.Callable[..., t.Any]:
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
    given = scoped.given_factory
    if given is not None:
        return given
    return configured_factory(scoped)


def configured_factory(scoped: ScopedLike) -> AnyFactory:
    """The session factory made from the current app's config for *scoped*."""
    from ._context import NO_APP_CONTEXT_MESSAGE

    ctx = current_app_context()
    if ctx is None:
        raise RuntimeError(NO_APP_CONTEXT_MESSAGE)
    state = get_state(ctx.app)
    if state is None or not is_initialised(ctx.app, scoped):
        raise RuntimeError(NOT_INITIALISED.format(kind=type(scoped).__name__, app=ctx.app))
    return state.engines.factory(scoped.name, scoped.is_async, scoped.session_options)
