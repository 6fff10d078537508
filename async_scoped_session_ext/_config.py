"""Creating an engine from ``app.config``, with errors that say the fix.

``SQLALCHEMY_ENGINES`` (sync) and ``SQLALCHEMY_ASYNC_ENGINES`` (async) map a name to a URL,
or to a dict of ``create_engine`` / ``create_async_engine`` arguments with a ``"url"`` key.
"""

from __future__ import annotations

import typing as t

from sqlalchemy import URL, create_engine, make_url
from sqlalchemy.exc import ArgumentError, InvalidRequestError

from ._sa_asyncio import create_async_engine

if t.TYPE_CHECKING:
    from ._types import AnyEngine

SYNC_CONFIG_KEY = "SQLALCHEMY_ENGINES"
ASYNC_CONFIG_KEY = "SQLALCHEMY_ASYNC_ENGINES"


def _engine_options(config: t.Mapping[str, t.Any], key: str, name: str) -> dict[str, t.Any]:
    engines = config.get(key)
    if not isinstance(engines, t.Mapping) or name not in engines:
        example = "sqlite+aiosqlite:///app.db" if key == ASYNC_CONFIG_KEY else "sqlite:///app.db"
        raise RuntimeError(
            f"'{key}[{name!r}]' is not defined in the app's config, and the scoped session"
            f" {name!r} was created without a session factory, so the library makes its"
            f" engine from the config. Set app.config[{key!r}] = {{{name!r}: {example!r}}}"
            " (a URL, or a dict of engine options with a 'url' key) in your app factory"
            " before the first request, or pass a sessionmaker."
        )
    value = engines[name]
    options = {"url": value} if isinstance(value, str) else dict(value)
    if "url" not in options:
        raise RuntimeError(f"'{key}[{name!r}]' has no 'url' key: {sorted(options)!r}.")
    return options


def create_configured_engine(config: t.Mapping[str, t.Any], name: str, is_async: bool) -> AnyEngine:
    """Create the engine *name* from the app's config, with errors that say the fix.

    The URL is parsed first, then its driver checked, then the engine created with the
    options, so that each mistake is reported as itself.
    """
    key = ASYNC_CONFIG_KEY if is_async else SYNC_CONFIG_KEY
    where = f"'{key}[{name!r}]'"
    options = _engine_options(config, key, name)
    url = _parse_url(options.pop("url"), where)
    _check_driver(url, where, is_async)
    create = create_async_engine if is_async else create_engine
    try:
        engine: AnyEngine = create(url, **options)
    except ImportError as error:  # the dialect loads, but its DBAPI module is not installed
        raise RuntimeError(
            f"{where} names the driver {url.drivername!r}, whose package is not installed"
            f" ({error}). Install it, or name a driver that is installed."
        ) from error
    # A bad value may also fail as a KeyError (echo="bogus") or an AttributeError (module=1).
    except (
        TypeError,
        ValueError,
        KeyError,
        AttributeError,
        ArgumentError,
        InvalidRequestError,
    ) as error:
        raise _option_error_kind(error)(
            f"{where} has engine options that {create.__name__}() rejects: {error!s} (the"
            f" options given: {sorted(options)!r}; in the URL's query string:"
            f" {sorted(url.query)!r}). Fix or remove the option named there; SQLAlchemy's"
            " create_engine() documentation and the driver's list what each accepts."
        ) from error
    return engine


def url_or_none(value: object) -> URL | None:
    """*value* (a string or a URL) parsed as a URL, or ``None`` when it is not one.

    SQLAlchemy's parse error is dropped, never chained: before 2.0.41 its message quotes the
    URL, password included. Callers raise their own error, without the value.
    """
    if not isinstance(value, str | URL):
        return None
    try:
        return make_url(value)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return None


def _parse_url(value: object, where: str) -> URL:
    """*value* as a URL; a value that is not one is reported without echoing it."""
    url = url_or_none(value)
    if url is not None:
        return url
    got = "" if isinstance(value, str | URL) else f" (it is a {type(value).__name__})"
    raise RuntimeError(
        f"{where} is not a valid database URL{got}. Write it as"
        " 'dialect+driver://user:password@host:port/database', for example"
        " 'postgresql+psycopg://user@localhost/app' or 'sqlite:///app.db': the port a"
        " number, special characters in the password percent-encoded"
        " (urllib.parse.quote_plus). The value is not shown: it may hold a password."
    )


def _check_driver(url: URL, where: str, is_async: bool) -> None:
    """Raise unless *url*'s dialect is async for an async engine, and sync for a sync one."""
    try:
        dialect = url.get_dialect()
    except ArgumentError as error:  # NoSuchModuleError: no such dialect or driver
        raise RuntimeError(
            f"{where} names the database driver {url.drivername!r}, which SQLAlchemy cannot"
            f" load ({error}). Check its spelling (for example 'postgresql+psycopg' or"
            " 'sqlite'), or install the package that provides it."
        ) from error
    if is_async:
        # The dialect an async engine would use: 'postgresql+psycopg' has an async one.
        if not dialect.get_async_dialect_cls(url).is_async:
            raise TypeError(
                f"{where} names a sync driver, but async_scoped_session needs an async"
                " one: use for example 'postgresql+asyncpg://' or 'sqlite+aiosqlite:///'."
            )
    elif dialect.is_async:
        raise TypeError(
            f"{where} names an async driver, but flask_scoped_session needs a sync one: use"
            " for example 'postgresql+psycopg://' or 'sqlite:///', or put the URL in"
            f" '{ASYNC_CONFIG_KEY}' for an async_scoped_session."
        )


def _option_error_kind(error: Exception) -> type[Exception]:
    """The class to re-raise an engine option error as: the kind SQLAlchemy raised."""
    for kind in (ArgumentError, InvalidRequestError, TypeError):
        if isinstance(error, kind):
            return kind
    return ValueError
