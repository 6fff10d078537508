"""The scoped session, created before any app, and the ``init-db`` command."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import with_appcontext

from async_scoped_session_ext import flask_scoped_session

from .models import Base

# No engine yet: each app makes its own from app.config["SQLALCHEMY_ENGINES"]["default"]
# on first use. expire_on_commit=False: a committed object can be returned as is.
session = flask_scoped_session(session_options={"expire_on_commit": False})


@click.command("init-db")
@click.option("--drop", is_flag=True, help="Drop the tables first.")
@with_appcontext  # the session needs the app context, which also closes it
def init_db_command(drop: bool) -> None:
    """Create the tables in the app's database."""
    engine = session.get_bind().engine
    if drop:
        Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    click.echo(f"Initialised {engine.url!r}.")  # repr hides the password


def init_app(app: Flask) -> None:
    """Scope the session to *app*'s contexts and add its command."""
    session.init_app(app)
    app.cli.add_command(init_db_command)
