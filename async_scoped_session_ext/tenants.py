"""Tenant database URLs that a tenant key can change in the database name only.

A tenant key usually comes from a request (a header, a path, a subdomain). Pasted into a
URL string, ``f"postgresql://app@db/{key}"``, the key ``adv?host=10.0.0.9:5441`` makes the
engine connect to another server. :class:`TenantURLs` builds each tenant's URL from a
template instead: the key must match a strict pattern, the database name made from it
must be a plain name, and it is set with ``URL.set(database=...)`` on the parsed
template, so the driver, host, port, user, password and query options all come from the
template::

    from async_scoped_session_ext import EngineRegistry
    from async_scoped_session_ext.tenants import InvalidTenantKey, TenantURLs

    registry = EngineRegistry(TenantURLs("postgresql+asyncpg://app@db/tenant_{key}"))

    try:
        session = registry[request.headers.get("X-Tenant", "")]
    except InvalidTenantKey:
        abort(400)
"""

from __future__ import annotations

import collections.abc as cabc
import os
import re
import unicodedata

from sqlalchemy import URL

from ._config import url_or_none

__all__ = ["DEFAULT_PATTERN", "MAX_KEY_LENGTH", "InvalidTenantKey", "TenantURLs", "tenant_url"]

DEFAULT_PATTERN = re.compile(r"[a-z0-9_-]{1,63}")
"""1 to 63 lowercase ASCII letters, digits, ``_`` or ``-``: the default tenant key pattern.

63 is PostgreSQL's longest identifier (in bytes). No unicode look-alikes, no upper case
(``Acme`` and ``acme`` are never two tenants), nothing with a meaning in a URL or a path.
"""

MAX_KEY_LENGTH = 255
"""Longer keys are refused whatever the pattern, before the pattern is tried."""

#: Characters with a meaning in a URL, a path, a libpq connection string or a SQLite URI.
_FORBIDDEN = frozenset("/\\?#%@:=")
_PLACEHOLDER = "{key}"
_POSTGRES_MAX_BYTES = 63
_SHOWN_LENGTH = 40

DatabaseSpec = str | cabc.Mapping[str, str] | cabc.Callable[[str], str | None]


class InvalidTenantKey(ValueError):
    """A tenant key that :class:`TenantURLs` refuses; answer it with a 400 or a 404."""


def _shown(text: str) -> str:
    """*text* quoted, cut to its first 40 characters: never a whole hostile key in a log."""
    if len(text) <= _SHOWN_LENGTH:
        return repr(text)
    return f"{text[:_SHOWN_LENGTH]!r}... ({len(text)} characters)"


def _flaw(name: str) -> str | None:
    """Why *name* cannot be a database name (or a file name), or ``None`` when it can."""
    rule = (
        "database names may not be empty, '.' or '..', nor contain whitespace, control"
        " characters or any of '/\\?#%@:='"
    )
    if name in ("", ".", ".."):
        return rule
    for char in name:
        if char in _FORBIDDEN:
            return f"it contains {char!r}: {rule}"
        if char.isspace() or unicodedata.category(char).startswith("C"):
            return f"it contains the character U+{ord(char):04X}: {rule}"
    return None


class TenantURLs:
    """The ``url_for`` of an :class:`~async_scoped_session_ext.EngineRegistry`: key -> URL.

    ``TenantURLs(template)(key)`` is *template* with its database replaced, through
    ``URL.set(database=...)``, by the tenant's database name; nothing else in the URL can
    change. The name is *template*'s database with every ``{key}`` replaced by the key,
    or, when *database* is given, made by *database*. For SQLite the database is a file:
    the name is a file name, and the file lies in the template's directory.

    A key is refused with :class:`InvalidTenantKey` (a ``ValueError``) when it is longer
    than :data:`MAX_KEY_LENGTH`, when it does not match *pattern* in full, when *database*
    knows no tenant of that key, or when its database name would be empty, ``.`` or
    ``..``, contain whitespace, a control character or one of ``/ \\ ? # % @ : =``, or
    (PostgreSQL) be longer than 63 bytes, where PostgreSQL would cut it and two tenants
    could share a database. Messages show at most the first 40 characters of a key.

    Every key that passes names *some* database on the template's server: put the keys in
    a namespace of their own (``tenant_{key}``, or a mapping of the known tenants), so that
    no key names a database that is not a tenant's (``postgres``, ``template1``, the app's
    own), and check that the tenant exists before serving it.

    :param template: the URL every tenant shares, as a string or a ``sqlalchemy.URL``.
        Its database contains ``{key}`` (``postgresql+asyncpg://app@db/tenant_{key}``,
        ``sqlite+aiosqlite:///data/{key}.db``: only in the file name) unless *database*
        is given; then, for SQLite, it is the directory of the files
        (``sqlite+aiosqlite:///data``), and for other databases it is ignored.
    :param database: how a key becomes a database name: a string in which every
        ``{key}`` is replaced by the key (``"tenant_{key}"``), a mapping from the keys
        to their names (any other key is refused), or a function returning the name, or
        ``None`` to refuse the key.
    :param pattern: what a key must match in full (``re.fullmatch``), a string or a
        compiled pattern; by default :data:`DEFAULT_PATTERN`.
    :raises ValueError: when the template is not a URL, lacks ``{key}`` where it is
        needed, is a SQLite URI filename (``?uri=true``), or when a name in the
        *database* mapping is refused.
    """

    def __init__(
        self,
        template: str | URL,
        *,
        database: DatabaseSpec | None = None,
        pattern: str | re.Pattern[str] = DEFAULT_PATTERN,
    ) -> None:
        url = url_or_none(template)
        if url is None:
            raise ValueError("TenantURLs(): the template is not a valid URL.")
        #: The parsed template; every tenant's URL is this one with another database.
        self.template: URL = url
        #: What a key must match in full.
        self.pattern: re.Pattern[str] = re.compile(pattern) if isinstance(pattern, str) else pattern
        self._sqlite = url.get_backend_name() == "sqlite"
        self._directory = ""
        given = url.database or ""
        if self._sqlite:
            if "uri" in url.query:  # the database would be a URI, with options of its own
                raise self._error("SQLite URI filenames (uri=true) are not supported")
            if database is None:  # "data/{key}.db": the files are in "data"
                self._directory, given = os.path.split(given)
            elif given in ("", ":memory:"):
                raise self._error(
                    "with database=, a SQLite template's database is the directory of the"
                    " tenants' files, as in 'sqlite:///data' ('sqlite:///.' for the working"
                    " directory)"
                )
            else:
                self._directory = given
            if _PLACEHOLDER in self._directory:
                raise self._error("'{key}' may only be in the database file's name")
        if database is None:
            if _PLACEHOLDER not in given:
                raise self._error(
                    "its database must contain '{key}' ('postgresql://app@db/tenant_{key}'),"
                    " or pass database="
                )
            database = given
        elif not self._sqlite and _PLACEHOLDER in given:
            raise self._error("give the database name either in the template or as database=")
        if isinstance(database, str) and _PLACEHOLDER not in database:
            raise ValueError(f"TenantURLs(): database={database!r} must contain '{{key}}'.")
        if isinstance(database, cabc.Mapping):
            database = dict(database)
            for key, name in database.items():
                if not self._matches(key):
                    raise ValueError(
                        f"TenantURLs(): the database mapping's key {_shown(key)} does not"
                        f" match the pattern {self.pattern.pattern!r}, so it could never be"
                        " served. Fix the key, or pass a pattern= that it matches."
                    )
                flaw = self._name_flaw(name)
                if flaw is not None:
                    raise ValueError(
                        f"TenantURLs(): the database name {_shown(name)} of the key"
                        f" {key!r} is refused: {flaw}."
                    )
        self._database = database

    def _error(self, why: str) -> ValueError:
        return ValueError(f"TenantURLs(): the template {self._shown_template()!r}: {why}.")

    def _shown_template(self) -> str:
        """The template with its password hidden, its database as given (``{key}`` unquoted)."""
        shown = self.template.render_as_string(hide_password=True)
        return shown.replace("%7Bkey%7D", _PLACEHOLDER)

    def _matches(self, key: str) -> bool:
        return len(key) <= MAX_KEY_LENGTH and self.pattern.fullmatch(key) is not None

    def _name_flaw(self, name: str) -> str | None:
        flaw = _flaw(name)
        if flaw is None and not self._sqlite and self.template.get_backend_name() == "postgresql":
            size = len(name.encode())
            if size > _POSTGRES_MAX_BYTES:
                flaw = (
                    f"it is {size} bytes long, and PostgreSQL cuts names at"
                    f" {_POSTGRES_MAX_BYTES} bytes, so two tenants could share a database"
                )
        return flaw

    def _name(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"A tenant key is a str, not {type(key).__name__}.")
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidTenantKey(
                f"A tenant key of {len(key)} characters is refused: tenant keys have at most"
                f" {MAX_KEY_LENGTH} characters. Keys from a request may be anything: catch"
                " InvalidTenantKey and answer with a 400."
            )
        if self.pattern.fullmatch(key) is None:
            how = " (1 to 63 lowercase ASCII letters, digits, '_' or '-')"
            raise InvalidTenantKey(
                f"The tenant key {_shown(key)} is refused: a tenant key must match"
                f" {self.pattern.pattern!r}{how if self.pattern is DEFAULT_PATTERN else ''}."
                " Keys from a request (a header, a path, a subdomain) may be anything:"
                " catch InvalidTenantKey and answer with a 400."
            )
        spec = self._database
        if isinstance(spec, str):
            name: str | None = spec.replace(_PLACEHOLDER, key)
        elif isinstance(spec, cabc.Mapping):
            name = spec.get(key)
        else:
            name = spec(key)
        if name is None:
            raise InvalidTenantKey(f"There is no tenant {_shown(key)}.")
        if not isinstance(name, str):
            raise TypeError(
                f"TenantURLs(database=...) returned an object of type {type(name).__name__!r}"
                f" for the key {_shown(key)}: return the database name as a str, or None to"
                " refuse the key."
            )
        flaw = self._name_flaw(name)
        if flaw is not None:
            raise InvalidTenantKey(
                f"The tenant key {_shown(key)} is refused: its database name {_shown(name)} cannot"
                f" be used: {flaw}. Narrow pattern= or change the database name."
            )
        return name

    def __call__(self, key: str) -> URL:
        """The URL of *key*'s database; :class:`InvalidTenantKey` when *key* is refused."""
        name = self._name(key)
        if self._sqlite:
            name = os.path.join(self._directory, name)
        return self.template.set(database=name)

    def is_valid(self, key: str) -> bool:
        """Whether *key* is accepted: whether ``self(key)`` returns a URL."""
        try:
            self._name(key)
        except InvalidTenantKey:
            return False
        return True

    def __repr__(self) -> str:
        return f"<TenantURLs {self._shown_template()!r}>"


def tenant_url(
    template: str | URL,
    key: str,
    *,
    database: DatabaseSpec | None = None,
    pattern: str | re.Pattern[str] = DEFAULT_PATTERN,
) -> URL:
    """``TenantURLs(template, database=database, pattern=pattern)(key)``: one tenant's URL.

    For one-off uses, such as a command that creates a tenant's database; a registry's
    ``url_for`` is a :class:`TenantURLs`, which parses and checks the template once.
    """
    return TenantURLs(template, database=database, pattern=pattern)(key)
