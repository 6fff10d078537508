"""Development tasks: ``python3 -m nox -s tests``, ``-s demo``, ``-s lint``, ``-s typing``."""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.10.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typing"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
EXTRAS = ".[quart,asyncpg,aiosqlite,psycopg]"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on SQLite and PostgreSQL (ASSE_POSTGRES_URL)."""
    session.install(EXTRAS, *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """Type-check the package, tests and examples with mypy --strict."""
    session.install(EXTRAS, "nox", *nox.project.dependency_groups(PYPROJECT, "typing"))
    session.run("mypy", *session.posargs)


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """Run the example Quart and Flask todo apps on embedded SQLite (--serve to keep serving)."""
    session.install(".[quart,aiosqlite]", "hypercorn", "httpx")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmark Flask async + asyncpg: the shared loop against a NullPool session per request."""
    session.install(EXTRAS, "flask[async]", "httpx")
    session.run("python", "-m", "bench.flask_async_asyncpg", *session.posargs)


@nox.session(default=False)
def stress(session: nox.Session) -> None:
    """Stress a hypercorn-served Quart app on PostgreSQL with faults; report leaks and memory."""
    session.install(EXTRAS, *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("python", "-m", "stress.quart_stress", *session.posargs)
