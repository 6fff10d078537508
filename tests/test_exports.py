"""The package's public surface: ``__all__`` and the SQLAlchemy base classes."""

from __future__ import annotations

import types

import pytest
import sqlalchemy.ext.asyncio
import sqlalchemy.orm
from werkzeug.local import LocalProxy

import async_scoped_session_ext
from async_scoped_session_ext import (
    _proxy,
    async_scoped_session,
    current_session,
    flask_scoped_session,
)


def test_all_lists_exactly_the_public_names() -> None:
    """``__all__`` is the sorted list of the module's public, non-module names."""
    public = sorted(
        name
        for name in dir(async_scoped_session_ext)
        if not name.startswith("_")
        and not isinstance(getattr(async_scoped_session_ext, name), types.ModuleType)
    )
    assert async_scoped_session_ext.__all__ == public
    assert public == [
        "EngineRegistry",
        "async_scoped_session",
        "current_async_session",
        "current_session",
        "current_sync_session",
        "flask_scoped_session",
        "get_scoped_session",
    ]


def test_star_import_gives_the_public_names() -> None:
    """``from async_scoped_session_ext import *`` binds exactly ``__all__``."""
    namespace: dict[str, object] = {}
    exec("from async_scoped_session_ext import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == async_scoped_session_ext.__all__


def test_classes_subclass_sqlalchemy_scoped_sessions() -> None:
    """The sync and async classes are SQLAlchemy's scoped sessions, not look-alikes."""
    assert issubclass(flask_scoped_session, sqlalchemy.orm.scoped_session)
    assert issubclass(async_scoped_session, sqlalchemy.ext.asyncio.async_scoped_session)
    assert not issubclass(flask_scoped_session, sqlalchemy.ext.asyncio.async_scoped_session)
    assert not issubclass(async_scoped_session, sqlalchemy.orm.scoped_session)


def test_current_session_is_a_proxy() -> None:
    """``current_session`` is a werkzeug ``LocalProxy``, resolved on access, not at import."""
    assert isinstance(current_session, LocalProxy)


def test_names_are_imported_on_first_use() -> None:
    """Each public name is the object its private module defines; a typo is an AttributeError."""
    for name in async_scoped_session_ext.__all__:
        value = getattr(async_scoped_session_ext, name)
        assert vars(async_scoped_session_ext)[name] is value  # cached after the first use
    assert async_scoped_session_ext.current_session is _proxy.current_session
    with pytest.raises(AttributeError, match="has no attribute 'current_sesion'"):
        getattr(async_scoped_session_ext, "current_sesion")  # noqa: B009
