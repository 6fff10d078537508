"""A Flask app factory whose engine comes from the config, made on first use.

``create_app(config)`` takes the import path of a config class, a mapping of settings, or
``None``; either is applied over :class:`~.config.DevConfig`. The scoped session in
:mod:`.db` exists before any app does; each app makes its own engine from
``SQLALCHEMY_ENGINES`` the first time a request or command uses the session. From the
repository root::

    flask --app examples.factory_app init-db    # SQLite file factory_app.db, here
    flask --app examples.factory_app run
    flask --app examples.factory_app shell      # current_session is in the namespace
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

from flask import Flask

from . import db, views
from .config import DevConfig


def create_app(config: str | cabc.Mapping[str, t.Any] | None = None) -> Flask:
    """Build an app; no database is touched until the first request or command."""
    app = Flask(__name__)
    app.config.from_object(DevConfig)
    if isinstance(config, str):
        app.config.from_object(config)  # e.g. "examples.factory_app.config.TestConfig"
    elif config is not None:
        app.config.from_mapping(config)
    db.init_app(app)
    app.register_blueprint(views.bp)
    return app
