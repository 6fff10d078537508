"""Config classes: ``SQLALCHEMY_ENGINES["default"]`` is the URL of the app's database."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class DevConfig:
    """Development: a SQLite file in the current directory."""

    SQLALCHEMY_ENGINES = {"default": "sqlite:///factory_app.db"}


class TestConfig:
    """Tests: ``TODO_DATABASE_URL`` (read at import), else a SQLite file of this process."""

    TESTING = True
    SQLALCHEMY_ENGINES = {
        "default": os.environ.get("TODO_DATABASE_URL")
        or f"sqlite:///{Path(tempfile.gettempdir()) / f'factory_app_test_{os.getpid()}.db'}"
    }
