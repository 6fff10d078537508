"""Alembic's ``Config`` and commands for the ``db`` CLI; the only module that imports Alembic.

Imported by the commands when they run, never when they are registered, so an app works
without Alembic installed until someone runs a migration command.
"""

from __future__ import annotations

import os
import sys
import typing as t
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util import CommandError

__all__ = ["CommandError", "command", "make_config"]

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "migrations"


class _Config(Config):
    """Alembic's configuration, with the library's own ``init`` template."""

    def get_template_directory(self) -> str:
        return str(TEMPLATES)


def make_config(directory: str) -> Config:
    """The configuration of the migrations in *directory* (``DIR/alembic.ini``, if any).

    Written to the current ``sys.stdout`` (Alembic's default is the one at import).
    """
    ini = os.path.join(directory, "alembic.ini")
    config = _Config(ini if os.path.exists(ini) else None, stdout=sys.stdout)
    config.set_main_option("script_location", directory)
    return config


def init(directory: str) -> None:
    """Write the migration environment into *directory* (``command.init``)."""
    config = make_config(directory)
    config.config_file_name = os.path.join(directory, "alembic.ini")
    command.init(config, directory, template=TEMPLATE)


def run(name: str, directory: str, *args: t.Any, **kwargs: t.Any) -> None:
    """Run Alembic's command *name* on the migrations in *directory*."""
    getattr(command, name)(make_config(directory), *args, **kwargs)
