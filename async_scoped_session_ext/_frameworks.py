"""The thin framework adapters: find the current context, hook the teardown and signals.

Everything framework-specific is here; the core (``_context``) knows neither Flask nor
Quart. Public framework APIs only, except ``_cv_app`` (each framework's current app
context variable; see DESIGN.md): ``flask.globals.app_ctx`` is a proxy over it that would
cost a failed attribute lookup on every session access.
"""

from __future__ import annotations

import asyncio
import sys
import typing as t

from ._close import close_all, close_sync_then_async, complete, defer_cancellation
from ._context import ensure_record
from ._runner import runner
from ._teardown import end_context, remove_then_take

if t.TYPE_CHECKING:
    from flask.sansio.app import App

    from ._context import AppContextLike
    from ._types import ScopedLike


class AppHooks(t.Protocol):
    """What a framework's teardown and signal receivers need of the app's state."""

    @property
    def removers(self) -> tuple[ScopedLike, ...]:
        """The sync scoped sessions whose ``remove()`` each teardown calls."""


def current_app_context() -> AppContextLike | None:
    """Return the innermost pushed Quart or Flask app context object, or ``None``.

    Quart is checked first: a Quart app never sets Flask's variable, and a module that was
    never imported holds no context. This runs on every session access.
    """
    modules = sys.modules
    quart_globals = modules.get("quart.globals")
    if quart_globals is not None:
        ctx = quart_globals._cv_app.get(None)
        if ctx is not None:
            return ctx  # type: ignore[no-any-return]
    flask_globals = modules.get("flask.globals")
    if flask_globals is not None:
        return flask_globals._cv_app.get(None)  # type: ignore[no-any-return]
    return None


class Framework(t.Protocol):
    """What the library needs to know of a framework, for one app."""

    is_quart: bool

    def in_request(self) -> bool:
        """Whether a request (or websocket) is being handled in this context."""

    def request_args(self) -> t.Mapping[str, str] | None:
        """The query arguments of the request (or websocket) being handled, else ``None``."""

    def install(self, app: App, hooks: AppHooks) -> None:
        """Connect the teardown and the other signal receivers to *app*.

        The teardown receives ``appcontext_tearing_down``, which both frameworks send after
        every teardown function of the app: those may still use the session (to roll it
        back, say), whenever they were registered.
        """


class FlaskFramework:
    """A Flask app: a sync teardown; async sessions are closed on the shared loop."""

    is_quart = False

    def in_request(self) -> bool:
        from flask import has_request_context

        return has_request_context()

    def request_args(self) -> t.Mapping[str, str] | None:
        from flask import has_request_context, request

        return request.args if has_request_context() else None

    def install(self, app: App, hooks: AppHooks) -> None:
        from flask.signals import appcontext_tearing_down

        def teardown(sender: App, exc: BaseException | None = None, **kwargs: object) -> None:
            ctx = current_app_context()  # Flask runs its teardowns in the ending context
            if ctx is None:  # pragma: no cover - Flask always does
                return
            record = end_context(ctx, failed=exc is not None)
            left = remove_then_take(record, hooks.removers)
            pending = close_sync_then_async(left) if left else None
            if pending is not None:  # only an app with async sessions gets here
                runner.run_soon(pending)

        appcontext_tearing_down.connect(teardown, app, weak=False)


class QuartFramework:
    """A Quart app: an async teardown on the app's loop; sync sessions close in a thread."""

    is_quart = True

    def in_request(self) -> bool:
        from quart import has_request_context, has_websocket_context

        return has_request_context() or has_websocket_context()

    def request_args(self) -> t.Mapping[str, str] | None:
        from quart import has_request_context, has_websocket_context, request, websocket

        if has_request_context():
            return request.args
        return websocket.args if has_websocket_context() else None

    def install(self, app: App, hooks: AppHooks) -> None:
        from quart.signals import (
            appcontext_tearing_down,
            got_request_exception,
            got_websocket_exception,
        )

        collects_errors = _collects_teardown_errors()

        async def teardown(sender: App, exc: BaseException | None = None, **kw: object) -> None:
            try:
                await close_context(exc)
            except asyncio.CancelledError as cancelled:  # the client hung up meanwhile
                if not collects_errors:
                    raise
                defer_cancellation(cancelled)  # not into Quart 0.23's group of errors

        async def close_context(exc: BaseException | None) -> None:
            ctx = current_app_context()  # Quart runs its teardowns in the ending context
            if ctx is None:  # pragma: no cover - Quart always does
                return
            record = end_context(ctx, failed=exc is not None)
            removers = [scoped for scoped in hooks.removers if record.holds(scoped)]
            if not removers:
                await close_all(record.take())
                return
            # Sync closes run in a worker thread, never on the event loop. A cancellation
            # (the client hung up) is re-raised once the rest is closed too.
            removing = asyncio.ensure_future(asyncio.to_thread(remove_then_take, record, removers))
            try:
                await complete(removing)
            finally:
                await close_all([*removing.result(), *record.take()])

        # Quart hands its teardowns exc=None once an error handler made a response of
        # the exception: remember which contexts failed.
        async def mark_failed(sender: App, **kwargs: object) -> None:
            ctx = current_app_context()
            if ctx is not None:
                ensure_record(ctx).failed = True

        appcontext_tearing_down.connect(teardown, app, weak=False)
        got_request_exception.connect(mark_failed, app, weak=False)
        got_websocket_exception.connect(mark_failed, app, weak=False)


def is_quart_app(app: App) -> bool:
    """Whether *app* is a Quart app (checked without importing Quart)."""
    quart_app = sys.modules.get("quart.app")
    return quart_app is not None and isinstance(app, quart_app.Quart)


def framework_of(app: App) -> Framework:
    """The adapter for *app*."""
    return QuartFramework() if is_quart_app(app) else FlaskFramework()


def _collects_teardown_errors() -> bool:
    """Whether Quart's ``AppContext.pop()`` collects what its teardown raises into a group.

    Quart 0.23 (Python 3.13+; one context class, as Flask 3.2) runs every teardown step,
    then raises ``BaseExceptionGroup("Errors during context teardown", [...])``: a request's
    cancellation raised there would end its task failed with that group instead of
    cancelled (its test client raises it). Earlier Quarts let it through as it is.
    """
    import quart.ctx

    return "RequestContext" not in vars(quart.ctx)
