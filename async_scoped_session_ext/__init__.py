"""SQLAlchemy sessions scoped to the Flask or Quart app context, sync and async.

The public names are imported on first use (PEP 562), so that importing a submodule alone,
such as the inert pytest plugin every pytest run loads, imports neither SQLAlchemy nor the
frameworks. Type checkers read the imports below.
"""

import importlib
import typing as t

if t.TYPE_CHECKING:
    from ._async import async_scoped_session
    from ._proxy import (
        current_async_session,
        current_session,
        current_sync_session,
        get_scoped_session,
    )
    from ._registry import EngineRegistry
    from ._sync import flask_scoped_session

__all__ = [
    "EngineRegistry",
    "async_scoped_session",
    "current_async_session",
    "current_session",
    "current_sync_session",
    "flask_scoped_session",
    "get_scoped_session",
]

#: Where each public name is defined.
_ORIGINS = {
    "EngineRegistry": "._registry",
    "async_scoped_session": "._async",
    "current_async_session": "._proxy",
    "current_session": "._proxy",
    "current_sync_session": "._proxy",
    "flask_scoped_session": "._sync",
    "get_scoped_session": "._proxy",
}

if not t.TYPE_CHECKING:  # type checkers see the imports above, and no catch-all

    def __getattr__(name: str) -> object:
        origin = _ORIGINS.get(name)
        if origin is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(origin, __name__), name)
        globals()[name] = value  # once: later lookups find it without this function
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
