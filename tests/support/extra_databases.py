"""More PostgreSQL databases beside the test database: tenants, a stand-in replica."""

from __future__ import annotations

import collections.abc as cabc
import contextlib

import pytest
from sqlalchemy import make_url

from .databases import connect_admin, postgres_url, require_postgres


@contextlib.contextmanager
def postgres_databases(*suffixes: str) -> cabc.Iterator[dict[str, str]]:
    """Create ``<test database>_<suffix>`` for each suffix; yield suffix -> database name.

    Skips the test when PostgreSQL is unreachable (fails with CI=true) or when the user may
    not create databases. The databases are dropped afterwards, even with open connections.
    """
    import psycopg

    require_postgres()
    base = make_url(postgres_url("psycopg")).database
    names = {suffix: f"{base}_{suffix}" for suffix in suffixes}
    created: list[str] = []
    try:
        with connect_admin(autocommit=True) as conn:
            for name in names.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                try:
                    conn.execute(f'CREATE DATABASE "{name}"')
                except psycopg.errors.InsufficientPrivilege:
                    pytest.skip("the PostgreSQL user may not create databases")
                created.append(name)
        yield names
    finally:
        with connect_admin(autocommit=True) as conn:
            for name in created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_url(name: str, driver: str) -> str:
    """The URL of the database *name* on the test server, with *driver*."""
    return make_url(postgres_url(driver)).set(database=name).render_as_string(hide_password=False)
