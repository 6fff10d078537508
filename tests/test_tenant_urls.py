"""TenantURLs: a tenant key changes a URL's database name and nothing else, or is refused.

The apps that serve tenants through it are in ``test_tenant_urls_apps.py``.
"""

from __future__ import annotations

import os
import typing as t
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import URL, make_url

from async_scoped_session_ext.tenants import (
    DEFAULT_PATTERN,
    MAX_KEY_LENGTH,
    InvalidTenantKey,
    TenantURLs,
    tenant_url,
)

PG = "postgresql+asyncpg://app:s3cret@db.internal:5433/tenant_{key}?ssl=require&timeout=5"
SQLITE_DIR = "/srv/tenants"

#: Keys that must never reach a URL: each would change more than the database if pasted.
HOSTILE = [
    "adv?host=127.0.0.1:5441",
    "adv?host=127.0.0.1&port=5441",
    "a/b",
    "../x",
    "..",
    ".",
    "a@b",
    "a:b",
    "a%2fb",
    "a#b",
    "a=b",
    "a b",
    "a\nb",
    "acme\n",
    "a\x00b",
    "a\\b",
    "x" * 10_000,
    "a" * 64,
    "",
    "Acme",
    "\u0430cme",  # Cyrillic a
    "\uff41cme",  # fullwidth a
    "acme\u200b",  # zero-width space
    "\u212a",  # Kelvin sign, which lower-cases to k
    "\N{LATIN SMALL LIGATURE FI}le",
    "٣",  # an Arabic-Indic digit
]


def same_but_database(url: URL, template: URL) -> bool:
    """Whether *url* and *template* differ at most in their database."""
    fields = ("drivername", "username", "password", "host", "port", "query")
    return all(getattr(url, name) == getattr(template, name) for name in fields)


def test_the_key_sets_the_database_only() -> None:
    """The URL is the template with the tenant's database; everything else is the template's."""
    template = make_url(PG)
    url = TenantURLs(PG)("acme-2_b")
    assert url.database == "tenant_acme-2_b"
    assert same_but_database(url, template)
    assert url.password == "s3cret" and dict(url.query) == {"ssl": "require", "timeout": "5"}


@pytest.mark.parametrize("key", HOSTILE)
@pytest.mark.parametrize(
    "template",
    [PG, "postgresql+psycopg://app@db/{key}", f"sqlite+aiosqlite:///{SQLITE_DIR}/{{key}}.db"],
)
def test_hostile_keys_are_refused(template: str, key: str) -> None:
    """Each hostile key is refused with InvalidTenantKey, a ValueError, by default."""
    urls = TenantURLs(template)
    with pytest.raises(InvalidTenantKey) as caught:
        urls(key)
    assert isinstance(caught.value, ValueError)
    assert not urls.is_valid(key)
    assert len(str(caught.value)) < 400  # a huge key is never echoed in full


@pytest.mark.parametrize(
    "key", ["adv?host=127.0.0.1:5441", "a/b", "a@b", "a:b", "a%2fb", "a\nb", "../x", "a#b"]
)
@pytest.mark.parametrize("template", [PG, f"sqlite:///{SQLITE_DIR}/{{key}}.db"])
def test_names_with_url_characters_are_refused_whatever_the_pattern(
    template: str, key: str
) -> None:
    """With a pattern that accepts anything, a database name with URL meaning is still refused."""
    with pytest.raises(InvalidTenantKey, match="database names may not"):
        TenantURLs(template, pattern=r"(?s).*")(key)


@settings(max_examples=500)
@given(
    key=st.text(max_size=300) | st.text(st.sampled_from("/\\?#%@:=&+[].\na2fZ_-é"), max_size=9),
    template=st.sampled_from([PG, "postgresql+psycopg://u@h/{key}", "sqlite:///d/t_{key}.db"]),
    pattern=st.sampled_from([DEFAULT_PATTERN.pattern, r"(?s).*", r"\w+", r"[^/]+"]),
)
def test_any_key_changes_the_database_only_or_is_refused(
    key: str, template: str, pattern: str
) -> None:
    """For any text and pattern: refused, or the same URL but for a plain database name."""
    try:
        url = TenantURLs(template, pattern=pattern)(key)
    except InvalidTenantKey:
        return
    assert same_but_database(url, make_url(template))
    assert url.database is not None
    if url.get_backend_name() == "sqlite":
        directory, name = os.path.split(url.database)
        assert directory == "d" and name == f"t_{key}.db"
    else:
        assert url.database.endswith(key) and len(url.database.encode()) <= 63
    # Rendered and parsed again (a config file, a log), it is still that URL; and so it is
    # when the name is pasted into the URL unescaped: it has nothing a URL would read.
    assert make_url(url.render_as_string(hide_password=False)) == url
    bare = url._replace(database=None)  # (set() ignores None)
    head, _, query = bare.render_as_string(hide_password=False).partition("?")
    pasted = make_url(f"{head}/{url.database}" + (f"?{query}" if query else ""))
    assert pasted == url


def test_the_default_pattern() -> None:
    """Lowercase ASCII letters, digits, '_' and '-', 1 to 63 characters."""
    urls = TenantURLs("postgresql://app@db/{key}")
    for key in ("a", "0", "_", "-", "acme", "a-b_c9", "a" * 63):
        assert urls(key).database == key
    for key in ("a" * 64, "", "a.b", "A", "é"):
        assert not urls.is_valid(key)


def test_key_errors_say_what_to_do() -> None:
    """The error names the rule and the fix, and cuts a long key to its first 40 characters."""
    urls = TenantURLs(PG)
    with pytest.raises(InvalidTenantKey) as caught:
        urls("adv?host=127.0.0.1:5441")
    assert str(caught.value) == (
        "The tenant key 'adv?host=127.0.0.1:5441' is refused: a tenant key must match"
        " '[a-z0-9_-]{1,63}' (1 to 63 lowercase ASCII letters, digits, '_' or '-')."
        " Keys from a request (a header, a path, a subdomain) may be anything: catch"
        " InvalidTenantKey and answer with a 400."
    )
    with pytest.raises(InvalidTenantKey, match=r"'xxxxx+'\.\.\. \(200 characters\)"):
        urls("x" * 200)
    with pytest.raises(InvalidTenantKey, match=f"10000 characters.*at most {MAX_KEY_LENGTH}"):
        TenantURLs(PG, pattern=r"(?s).*")("x" * 10_000)


def test_postgres_names_past_63_bytes_are_refused() -> None:
    """PostgreSQL would cut a longer name, so two tenants could share a database: refused."""
    urls = TenantURLs(PG)  # "tenant_" leaves 56 bytes for the key
    assert urls("k" * 56).database == "tenant_" + "k" * 56
    with pytest.raises(InvalidTenantKey, match="64 bytes long, and PostgreSQL cuts names at 63"):
        urls("k" * 57)
    anything = TenantURLs("postgresql://app@db/{key}", pattern=r"\w+")
    assert anything("é" * 31).database == "é" * 31  # 62 bytes
    assert not anything.is_valid("é" * 32)  # 64 bytes, in 32 characters
    # Other databases have limits of their own: only the key's pattern applies.
    assert TenantURLs("mysql://app@db/{key}", pattern=r"\w+")("é" * 40).database == "é" * 40


def test_sqlite_files_stay_in_the_templates_directory(tmp_path: Path) -> None:
    """A SQLite key names a file in the template's directory, never a path."""
    urls = TenantURLs(f"sqlite+aiosqlite:///{tmp_path}/{{key}}.db", pattern=r"(?s).*")
    assert urls("acme").database == f"{tmp_path}/acme.db"
    for key in ("../x", "a/b", "a\\b", "/etc/passwd", ":memory:", "file:x?mode=ro"):
        assert not urls.is_valid(key)
    whole = TenantURLs(f"sqlite:///{tmp_path}", database="{key}", pattern=r"(?s).*")
    assert whole("acme").database == f"{tmp_path}/acme"
    for key in ("..", ".", "", "a/..", "x\n"):
        assert not whole.is_valid(key)
    assert TenantURLs("sqlite:///{key}.db")("acme").database == "acme.db"  # working directory


def test_a_mapping_serves_its_tenants_only() -> None:
    """With a mapping, each known key gets its name; any other key is refused."""
    urls = TenantURLs("postgresql://app@db", database={"acme": "acme_prod", "globex": "gx"})
    assert urls("acme").database == "acme_prod"
    assert urls("globex").render_as_string() == "postgresql://app@db/gx"
    with pytest.raises(InvalidTenantKey, match="^There is no tenant 'initech'.$"):
        urls("initech")
    assert not urls.is_valid("adv?host=x")


def test_a_mapping_is_checked_when_made() -> None:
    """A mapping key the pattern refuses, or a name with URL characters, fails at once."""
    with pytest.raises(ValueError, match="mapping's key 'Acme' does not match"):
        TenantURLs("postgresql://app@db", database={"Acme": "acme"})
    with pytest.raises(ValueError, match="database name 'a/b' of the key 'acme' is refused"):
        TenantURLs("postgresql://app@db", database={"acme": "a/b"})
    with pytest.raises(ValueError, match="64 bytes long"):
        TenantURLs("postgresql://app@db", database={"acme": "a" * 64})


def test_a_function_names_the_databases() -> None:
    """A function gives the name, or None to refuse the key; its names are checked too."""
    names = {"acme": "acme_db", "bad": "x?host=evil", "num": 7}
    urls = TenantURLs("postgresql://app@db", database=lambda key: t.cast(t.Any, names.get(key)))
    assert urls("acme").database == "acme_db"
    with pytest.raises(InvalidTenantKey, match="There is no tenant 'globex'"):
        urls("globex")
    with pytest.raises(InvalidTenantKey, match=r"database name 'x\?host=evil' cannot be used"):
        urls("bad")
    with pytest.raises(TypeError, match="returned an object of type 'int' for the key 'num'"):
        urls("num")


@pytest.mark.parametrize(
    ("template", "database", "error"),
    [
        ("not a url", None, r"^TenantURLs\(\): the template is not a valid URL\.$"),
        ("postgresql://app:pw@db", None, r"'postgresql://app:\*\*\*@db': its database must"),
        ("postgresql://app@db/x_{key}", "{key}", "either in the template or as database="),
        ("postgresql://app@db", "tenant", r"database='tenant' must contain '\{key\}'"),
        ("sqlite://", None, r"'sqlite://': its database must contain '\{key\}'"),
        ("sqlite:///:memory:", None, r"its database must contain '\{key\}'"),
        ("sqlite:///:memory:", "{key}", "with database=, a SQLite template's database is the"),
        ("sqlite://", "{key}", r"directory of the tenants' files, as in 'sqlite:///data'"),
        ("sqlite:///{key}/t.db", None, r"'\{key\}' may only be in the database file's name"),
        ("sqlite:///d/{key}.db?uri=true", None, r"URI filenames \(uri=true\)"),
    ],
)
def test_bad_templates_are_refused(template: str, database: str | None, error: str) -> None:
    """A template that cannot be used fails when made, with its password hidden."""
    with pytest.raises(ValueError, match=error) as caught:
        TenantURLs(template, database=database)
    assert "pw" not in str(caught.value) and caught.value.__cause__ is None


def test_template_as_url_function_and_repr() -> None:
    """A URL object works as the template; tenant_url is the one-off form; repr hides it."""
    template = make_url(PG)
    assert tenant_url(template, "acme") == template.set(database="tenant_acme")
    urls = TenantURLs(template)
    assert repr(urls) == (
        "<TenantURLs 'postgresql+asyncpg://app:***@db.internal:5433/tenant_{key}"
        "?ssl=require&timeout=5'>"
    )
    with pytest.raises(TypeError, match="A tenant key is a str, not bytes"):
        urls(t.cast(str, b"acme"))
