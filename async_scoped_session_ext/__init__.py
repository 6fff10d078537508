"""SQLAlchemy sessions scoped to the Flask or Quart app context, sync and async."""

from ._async import async_scoped_session
from ._proxy import current_session, get_scoped_session
from ._registry import EngineRegistry
from ._sync import flask_scoped_session

__all__ = [
    "EngineRegistry",
    "async_scoped_session",
    "current_session",
    "flask_scoped_session",
    "get_scoped_session",
]
