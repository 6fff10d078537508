"""Engine options for asyncpg behind PgBouncer in transaction mode.

With ``pool_mode = transaction``, PgBouncer hands each *transaction* to whichever server
connection is free, and every client shares those server connections. Prepared statements
are per server connection, so SQLAlchemy's asyncpg dialect fails with its defaults, and
with only part of the fix: statements prepared in one transaction are missing in the next
("prepared statement ... does not exist"), two processes prepare the same sequential name
on one server connection ("... already exists"), or the protocol goes out of step
("insufficient data in buffer").

:func:`transaction_mode` returns the engine options that avoid all three::

    from async_scoped_session_ext.pgbouncer import transaction_mode

    engine = create_async_engine(**transaction_mode("postgresql+asyncpg://app@pgbouncer/app"))
    # or, for a scoped session made from the app's config:
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": transaction_mode(url)}
"""

from __future__ import annotations

import re
import typing as t
from importlib.metadata import PackageNotFoundError, version
from uuid import uuid4

from sqlalchemy import URL

from ._config import url_or_none

__all__ = ["transaction_mode"]

_URL_CACHE_KEY = "prepared_statement_cache_size"
_DRIVER_CACHE_KEY = "statement_cache_size"
_NAME_FUNC_KEY = "prepared_statement_name_func"
#: The asyncpg release from which a statement prepared with the cache off has no name.
_UNNAMED_SINCE = (0, 31)


def statement_name() -> str:
    """A prepared statement name that no other client of the pooler will use."""
    return f"__asyncpg_{uuid4()}__"


def names_every_statement() -> bool:
    """Whether the installed asyncpg names each statement it prepares, even with its cache
    off: releases before 0.31 do. ``False`` without asyncpg (the engine then fails with
    SQLAlchemy's "No module named 'asyncpg'")."""
    try:
        installed = version("asyncpg")
    except PackageNotFoundError:
        return False
    release = tuple(int(part) for part in re.findall(r"\d+", installed)[:2])
    return release < _UNNAMED_SINCE


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def transaction_mode(url: str | URL, **engine_options: t.Any) -> dict[str, t.Any]:
    """Options for ``create_async_engine`` with asyncpg behind PgBouncer's transaction mode.

    The result is ``{"url": ..., "connect_args": {...}, **engine_options}``: pass it as
    ``create_async_engine(**transaction_mode(url))``, or use it as a value of
    ``app.config["SQLALCHEMY_ASYNC_ENGINES"]``. It sets:

    * ``prepared_statement_cache_size=0`` in the URL: SQLAlchemy keeps no prepared
      statement for reuse, so none is used in a later transaction, which may run on
      another server connection where it does not exist.
    * ``connect_args["statement_cache_size"] = 0``: asyncpg keeps none either. From
      asyncpg 0.31, every statement is then *unnamed*: parsed again for each execution,
      and nothing is left on the server connection.
    * only with asyncpg older than 0.31, which names every statement it prepares,
      ``connect_args["prepared_statement_name_func"]``: a random (UUID) name for each,
      instead of asyncpg's sequential ``__asyncpg_stmt_1__`` (counted per process), which
      another process may already have prepared on the same server connection.

    asyncpg closes a named statement later, possibly in a transaction that PgBouncer runs on
    another server connection, so before asyncpg 0.31 such statements pile up on the server
    until PgBouncer closes the connection (``server_lifetime``);
    ``server_reset_query_always = 1`` in PgBouncer clears them after every transaction.
    See ``docs/pgbouncer.md``.

    :param url: a ``postgresql+asyncpg://`` URL of the PgBouncer, as a string or a
        :class:`sqlalchemy.engine.URL`. A ``prepared_statement_cache_size=0`` query
        parameter is added to it.
    :param engine_options: further ``create_async_engine`` arguments, returned as given.
        ``connect_args`` is merged with the preset's: its other keys are kept, and a
        ``prepared_statement_name_func`` of its own is used (it must return a name unique
        across all clients; named statements are left on the server, as above).
    :returns: the engine options, a new dict; ``"url"`` is a :class:`sqlalchemy.engine.URL`.
    :raises ValueError: when the URL is not valid or does not name the asyncpg driver, or
        when an option given would undo the preset (a cache size other than 0).
    """
    parsed = url_or_none(url)
    if parsed is None:
        raise ValueError("transaction_mode(): the url is not a valid database URL.")
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() != "asyncpg":
        raise ValueError(
            f"transaction_mode() configures SQLAlchemy's asyncpg driver, but the url"
            f" {_shown(parsed)!r} uses {parsed.drivername!r}. Use a 'postgresql+asyncpg://'"
            " URL (pip install asyncpg)."
        )
    cache_size = parsed.query.get(_URL_CACHE_KEY)
    if cache_size is not None and cache_size != "0":
        raise ValueError(
            f"transaction_mode(): the url {_shown(parsed)!r} sets {_URL_CACHE_KEY}="
            f"{cache_size!r}, but PgBouncer's transaction mode needs 0. Remove it from the URL."
        )
    connect_args: dict[str, t.Any] = {_DRIVER_CACHE_KEY: 0}
    if names_every_statement():
        connect_args[_NAME_FUNC_KEY] = statement_name
    given = engine_options.pop("connect_args", None) or {}
    if given.get(_DRIVER_CACHE_KEY, 0) != 0:
        raise ValueError(
            f"transaction_mode(): connect_args[{_DRIVER_CACHE_KEY!r}] is"
            f" {given[_DRIVER_CACHE_KEY]!r}, but PgBouncer's transaction mode needs 0."
            " Leave it out."
        )
    connect_args.update(given)
    return {
        "url": parsed.update_query_dict({_URL_CACHE_KEY: "0"}),
        **engine_options,
        "connect_args": connect_args,
    }
