"""The ``db`` command group (``flask db``, ``quart db``): Alembic migrations and tables.

Added to each app once, by the first ``init_app``. Registering it imports neither Alembic
nor the migrations: a command imports them when it runs, and without Alembic it fails with
the line that installs it. ``create-all`` and ``drop-all`` need no Alembic.
"""

from __future__ import annotations

import types
import typing as t

import click

from ._frameworks import current_app_context

if t.TYPE_CHECKING:
    from flask.sansio.app import App

GROUP_KEY = "SQLALCHEMY_CLI_GROUP"
DIRECTORY_KEY = "SQLALCHEMY_MIGRATIONS_DIRECTORY"
NO_ALEMBIC = (
    "Alembic is not installed ({error}), and the migration commands run it. Install it"
    " with: pip install 'async-scoped-session-ext[alembic]'"
)
NO_METADATA = (
    " The engine has no models to compare with: give its scoped session 'metadata='"
    " (for example flask_scoped_session(metadata=Base.metadata)), or pass"
    " target_metadata= to run_migrations() in {directory}/env.py."
)

_Func = t.TypeVar("_Func", bound=t.Callable[..., None])
_Decorator: t.TypeAlias = t.Callable[[t.Callable[..., None]], click.Command]


def add_cli(app: App) -> None:
    """Add the ``db`` group to *app*'s CLI, named by ``SQLALCHEMY_CLI_GROUP``.

    No group if that is ``None`` or empty, nor if the app already has a command of that name
    (Flask-Migrate's or Flask-Alembic's ``db``, registered first): it is never replaced.
    """
    name = app.config.get(GROUP_KEY, "db")
    if not name or name in app.cli.commands:
        return
    # A Flask or Quart AppGroup: its groups' commands run in an app context.
    make_group = t.cast("t.Callable[[t.Callable[[], None]], click.Group]", app.cli.group(name))

    def group() -> None:
        """Database migrations (Alembic) and tables, for the app's scoped sessions."""

    _add_commands(make_group(group))


def _app() -> App:
    ctx = current_app_context()
    if ctx is None:  # pragma: no cover - the AppGroup pushes one
        raise click.ClickException("The 'db' commands need an app context.")
    return t.cast("App", ctx.app)


def _group_path() -> str:
    """The group's command as the user typed it: ``flask db``, ``quart db``."""
    parent = click.get_current_context().parent
    return parent.command_path if parent is not None else "flask db"


def _directory(directory: str | None) -> str:
    return directory or str(_app().config.get(DIRECTORY_KEY, "migrations"))


def _alembic() -> types.ModuleType:
    """The ``_alembic`` module, or a click error that says how to install Alembic."""
    try:
        from . import _alembic
    except ImportError as error:
        if error.name is None or error.name.partition(".")[0] not in ("alembic", "mako"):
            raise
        raise click.ClickException(NO_ALEMBIC.format(error=error)) from error
    return _alembic


def _alembic_command(name: str, directory: str | None, *args: t.Any, **kwargs: t.Any) -> None:
    module, where = _alembic(), _directory(directory)
    try:
        if name == "init":
            module.init(where)
        else:
            module.run(name, where, *args, **kwargs)
    except module.CommandError as error:
        hint = NO_METADATA.format(directory=where) if "MetaData" in str(error) else ""
        raise click.ClickException(f"{error}{hint}") from error


def _directory_option(func: _Func) -> _Func:
    return click.option(
        "-d",
        "--directory",
        default=None,
        help=f"The migrations directory (default: the app's {DIRECTORY_KEY} or 'migrations').",
    )(func)


_sql = click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
_verbose = click.option("-v", "--verbose", is_flag=True, help="Show more detail.")


def _add_commands(group: click.Group) -> None:
    def command(name: str) -> _Decorator:
        # Both frameworks' AppGroup take with_appcontext= (Quart's default is False).
        return t.cast(_Decorator, group.command(name, with_appcontext=True))

    @command("init")
    @_directory_option
    def init(directory: str | None) -> None:
        """Create the migrations directory (env.py, script.py.mako, alembic.ini)."""
        _alembic_command("init", directory)
        click.echo(
            "The engines and their metadata come from the app's scoped sessions (metadata=);"
            f" alembic.ini only configures logging. Next: '{_group_path()} revision"
            " --autogenerate -m MESSAGE'."
        )

    @command("revision")
    @_directory_option
    @click.option("-m", "--message", default=None, help="The revision's message.")
    @click.option("--autogenerate", is_flag=True, help="Compare the models with the database.")
    @click.option("--rev-id", default=None, help="The revision's id (default: generated).")
    def revision(
        directory: str | None, message: str | None, autogenerate: bool, rev_id: str | None
    ) -> None:
        """Create a revision, one upgrade/downgrade per engine."""
        _alembic_command(
            "revision", directory, message=message, autogenerate=autogenerate, rev_id=rev_id
        )

    @command("upgrade")
    @_directory_option
    @_sql
    @click.argument("revision", default="head")
    def upgrade(directory: str | None, sql: bool, revision: str) -> None:
        """Upgrade every engine's database to REVISION (default: head)."""
        _alembic_command("upgrade", directory, revision, sql=sql)

    @command("downgrade")
    @_directory_option
    @_sql
    @click.argument("revision", default="-1")
    def downgrade(directory: str | None, sql: bool, revision: str) -> None:
        """Downgrade every engine's database to REVISION (default: -1, one step back)."""
        _alembic_command("downgrade", directory, revision, sql=sql)

    @command("current")
    @_directory_option
    @_verbose
    def current(directory: str | None, verbose: bool) -> None:
        """Show each engine's current revision."""
        _alembic_command("current", directory, verbose=verbose)

    @command("history")
    @_directory_option
    @_verbose
    @click.option("-r", "--rev-range", default=None, help="A range, as 'base:head'.")
    def history(directory: str | None, verbose: bool, rev_range: str | None) -> None:
        """List the revisions."""
        _alembic_command("history", directory, rev_range=rev_range, verbose=verbose)

    @command("stamp")
    @_directory_option
    @_sql
    @click.argument("revision")
    def stamp(directory: str | None, sql: bool, revision: str) -> None:
        """Set every engine's revision to REVISION without running migrations."""
        _alembic_command("stamp", directory, revision, sql=sql)

    @command("create-all")
    def create_all() -> None:
        """Development: create the tables of each engine's metadata= (no migrations)."""
        _tables("create_all")

    @command("drop-all")
    @click.confirmation_option(
        "--yes", prompt="Drop every table of each engine's metadata=, with its data?"
    )
    def drop_all() -> None:
        """Development: drop the tables of each engine's metadata=."""
        _tables("drop_all")


def _tables(method: str) -> None:
    from .migrations import run_on, targets

    for target in targets(_app()):
        if target.metadata is None:
            click.echo(f"{target.name}: no metadata= given, skipped")
            continue
        run_on(target.engine, getattr(target.metadata, method))
        click.echo(f"{target.name}: {method.replace('_', ' ')} done")
