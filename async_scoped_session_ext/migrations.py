"""Alembic migrations for the engines of an app's scoped sessions.

``flask db init`` (``quart db init``) writes an ``env.py`` that calls :func:`run_migrations`,
and a ``script.py.mako`` that calls :func:`engine_names`. One path for one engine and for
several: each engine is migrated in a transaction of its own, with its own
``alembic_version`` table, and each revision has an ``upgrade_<name>()`` /
``downgrade_<name>()`` pair per engine (Alembic's multi-database pattern). Sync and async
engines alike: an async engine is migrated on the library's shared event loop.
"""

from __future__ import annotations

import collections.abc as cabc
import logging
import sys
import typing as t

from sqlalchemy import Connection, Engine, MetaData

from ._accessors import engine_of
from ._app import get_state
from ._frameworks import current_app_context
from ._runner import runner
from ._sa_asyncio import AsyncEngine

if t.TYPE_CHECKING:
    from alembic.config import Config
    from flask.sansio.app import App

    from ._types import ScopedLike

logger: logging.Logger = logging.getLogger("async_scoped_session_ext.migrations")

__all__ = ["Target", "engine_names", "run_migrations", "targets"]

TargetMetadata: t.TypeAlias = "MetaData | cabc.Mapping[str, MetaData] | None"
#: Where :func:`run_migrations` leaves the names it migrated, for ``script.py.mako``.
NAMES_ATTRIBUTE = "async_scoped_session_ext.engine_names"

NO_APP = (
    "Migrations need the app whose engines they migrate, and no app context is pushed. Run"
    " them with 'flask db ...' / 'quart db ...', which push one, or inside"
    " 'with app.app_context():', or pass 'app=' to run_migrations()."
)


class Target(t.NamedTuple):
    """One engine to migrate: its scoped sessions' name, the engine, the models' metadata."""

    name: str
    engine: Engine | AsyncEngine
    metadata: MetaData | None


def _current_app(app: App | None) -> App:
    if app is not None:
        return app
    ctx = current_app_context()
    if ctx is None:
        raise RuntimeError(NO_APP)
    return t.cast("App", ctx.app)


def _by_name(app: App) -> dict[str, list[ScopedLike]]:
    """The app's named scoped sessions by name, sync ones first (their engine is used)."""
    state = get_state(app)
    named: dict[str, list[ScopedLike]] = {}
    for scoped in state.named_scoped() if state is not None else []:
        named.setdefault(scoped.name, []).append(scoped)
    for group in named.values():
        group.sort(key=lambda scoped: scoped.is_async)
    return named


def _check_name(name: str) -> str:
    if not name.isidentifier():
        raise ValueError(
            f"The engine name {name!r} is not a Python identifier, and each migration has"
            f" an 'upgrade_<name>()' function per engine. Rename the scoped session"
            f" (name='{name.replace('-', '_')}' and its config key), or leave it out by"
            " passing target_metadata={name: metadata, ...} without it in env.py."
        )
    return name


def engine_names(config: Config | None = None, app: App | None = None) -> list[str]:
    """The names of the engines a migration covers (``script.py.mako`` calls it).

    Those that :func:`run_migrations` migrated in this Alembic command (``revision
    --autogenerate``), or else every named scoped session's name of the (current) app.
    """
    migrated = config.attributes.get(NAMES_ATTRIBUTE) if config is not None else None
    if migrated is not None:
        return list(migrated)
    names = [_check_name(name) for name in _by_name(_current_app(app))]
    if not names:
        raise RuntimeError(_NO_ENGINES)
    return names


_NO_ENGINES = (
    "The app has no named scoped session, so there is no engine to migrate. Create a"
    " flask_scoped_session or async_scoped_session and call 'init_app(app)' in the app"
    " factory that the 'db' commands load (--app)."
)


def targets(app: App | None = None, target_metadata: TargetMetadata = None) -> list[Target]:
    """The engines to migrate (or create tables in), one per scoped session name.

    Each name's engine is its sync scoped session's when it has both kinds. Its metadata is
    *target_metadata* if given, else the scoped sessions' ``metadata=``. A mapping of
    name to metadata selects those names only; a single ``MetaData`` needs a single engine.
    """
    app = _current_app(app)
    named = _by_name(app)
    if not named:
        raise RuntimeError(_NO_ENGINES)
    if isinstance(target_metadata, MetaData):
        if len(named) > 1:
            raise ValueError(
                f"target_metadata is one MetaData, but the app has {len(named)} engines"
                f" ({', '.join(named)}). Pass a mapping instead, e.g."
                " target_metadata={'default': Base.metadata, 'users': UsersBase.metadata}."
            )
        target_metadata = dict.fromkeys(named, target_metadata)
    if target_metadata is not None:
        unknown = sorted(set(target_metadata) - set(named))
        if unknown:
            raise ValueError(
                f"target_metadata names engines the app does not have: {unknown}. Its"
                f" scoped sessions are named {sorted(named)}; use those names as keys."
            )
    found: list[Target] = []
    for name, group in named.items():
        if target_metadata is not None and name not in target_metadata:
            continue
        metadata = target_metadata[name] if target_metadata is not None else _of(group)
        found.append(Target(_check_name(name), engine_of(group[0], app), metadata))
    return found


def _of(group: list[ScopedLike]) -> MetaData | None:
    """The one metadata the scoped sessions of one name were given (``None``: none)."""
    given = {
        id(scoped.metadata): scoped.metadata for scoped in group if scoped.metadata is not None
    }
    if len(given) > 1:
        raise ValueError(
            f"The scoped sessions named {group[0].name!r} were given different metadata="
            " objects; one engine has one set of tables. Give them the same MetaData (for"
            " example Base.metadata), or give it to one of them only."
        )
    return next(iter(given.values()), None)


def run_on(engine: Engine | AsyncEngine, work: t.Callable[[Connection], object]) -> None:
    """Call ``work(connection)`` on a connection of *engine* and commit, sync or async.

    An async engine is used on the library's shared loop (also from a Quart command, which
    runs in a loop of its own), then disposed there: no pooled connection of that loop is
    handed to another one.
    """
    if isinstance(engine, AsyncEngine):
        runner.run(_run_async(engine, work))
        return
    with engine.connect() as connection:
        work(connection)
        connection.commit()


async def _run_async(engine: AsyncEngine, work: t.Callable[[Connection], object]) -> None:
    try:
        async with engine.connect() as connection:
            await connection.run_sync(work)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations(target_metadata: TargetMetadata = None, *, app: App | None = None) -> None:
    """Run the current Alembic command on each engine of the app: call it from ``env.py``.

    :param target_metadata: ``None`` uses each scoped session's ``metadata=``; a
        ``MetaData`` (an app with one engine), or a mapping of engine name to ``MetaData``
        (only those engines are migrated).
    :param app: the app; by default the current app (``flask db`` pushes its context).

    Offline (``--sql``) the SQL of every engine is written out, each after a comment with
    its name; online each engine is migrated in its own transaction. SQLite tables are
    altered in batch mode, and column type changes are detected.
    """
    from alembic import context

    config = context.config
    if config.config_file_name and not logging.getLogger().handlers:
        from logging.config import fileConfig  # unless the app configured logging itself

        fileConfig(config.config_file_name, disable_existing_loggers=False)
    found = targets(app, target_metadata)
    config.attributes[NAMES_ATTRIBUTE] = [target.name for target in found]
    for target in found:
        options: dict[str, t.Any] = {
            "target_metadata": target.metadata,
            "upgrade_token": f"{target.name}_upgrades",
            "downgrade_token": f"{target.name}_downgrades",
            "render_as_batch": target.engine.dialect.name == "sqlite",
            "compare_type": True,
        }
        if context.is_offline_mode():
            buffer = config.output_buffer or sys.stdout
            buffer.write(f"\n-- Engine: {target.name}\n\n")
            url = target.engine.url
            context.configure(url=url, literal_binds=True, output_buffer=buffer, **options)
            with context.begin_transaction():
                context.run_migrations(engine_name=target.name)
        else:
            logger.info("Engine %r: %s", target.name, target.engine.url)
            run_on(target.engine, _migrate(target.name, options))


def _migrate(name: str, options: dict[str, t.Any]) -> t.Callable[[Connection], None]:
    def migrate(connection: Connection) -> None:
        from alembic import context

        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations(engine_name=name)

    return migrate
