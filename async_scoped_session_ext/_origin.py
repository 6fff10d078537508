"""What an ending app context served (a request, a CLI command, or nothing), for messages.

Only the uncommitted-changes warning asks, so none of this runs on the hot path. When the
app context's teardown runs, Flask 3.1 and Quart have already reset their request context
variable, so ``has_request_context()`` is false there. The request is found instead as the
``self`` of the request (or websocket) context whose ``pop()`` is tearing the app context
down, up the caller's stack (coroutines awaited by that ``pop()`` included). Flask 3.2
and Quart 0.23 merge the contexts, and their app context says itself (``has_request``,
``has_websocket``).
"""

from __future__ import annotations

import inspect
import sys
import typing as t

#: The request and websocket context classes of the frameworks imported so far.
_CONTEXT_CLASSES = (("flask.ctx", "RequestContext"), ("quart.ctx", "RequestContext"))
_WEBSOCKET_CLASS = ("quart.ctx", "WebsocketContext")


def describe(ctx: object) -> str:
    """Say what *ctx*, an app context being torn down, served: ``"the request to endpoint
    'add'"``, ``"the CLI command 'flask seed'"`` or ``"a plain app context ..."``."""
    if getattr(ctx, "has_request", False):  # Flask 3.2, Quart 0.23: one context for all
        return _request_text(t.cast(t.Any, ctx).request, "request")
    if getattr(ctx, "has_websocket", False):  # Quart 0.23
        return _request_text(t.cast(t.Any, ctx).websocket, "websocket")
    found = _popping_request_context()
    if found is not None:
        context, kind = found
        return _request_text(getattr(context, kind), kind)
    click = sys.modules.get("click")
    command = click.get_current_context(silent=True) if click is not None else None
    if command is not None:
        return f"the CLI command {command.command_path!r}"
    return "a plain app context (no request, no CLI command)"


def _request_text(request: t.Any, kind: str) -> str:
    endpoint = getattr(request, "endpoint", None)
    if endpoint is None:
        return f"the {kind} to {getattr(request, 'path', '?')!r} (no endpoint matched)"
    return f"the {kind} to endpoint {endpoint!r}"


def _popping_request_context() -> tuple[object, str] | None:
    """The request or websocket context up the stack, with its attribute for the request."""
    classes = [
        (cls, "websocket" if (module, name) == _WEBSOCKET_CLASS else "request")
        for module, name in (*_CONTEXT_CLASSES, _WEBSOCKET_CLASS)
        if (cls := _defined(module, name)) is not None
    ]
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        for cls, kind in classes:
            if isinstance(owner, cls):
                return owner, kind
        frame = frame.f_back
    return None


def _defined(module_name: str, name: str) -> type | None:
    """The class *name* defined in *module_name*, if that module is imported.

    Read from the module's namespace, not with ``getattr``: Flask 3.2 keeps
    ``RequestContext`` as a deprecated alias of ``AppContext``, served by the module's
    ``__getattr__`` with a ``DeprecationWarning``.
    """
    module = sys.modules.get(module_name)
    value = vars(module).get(name) if module is not None else None
    return value if isinstance(value, type) else None
