"""Which engines migrations and ``create-all`` cover, with which metadata, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import MetaData

from async_scoped_session_ext import EngineRegistry, async_scoped_session, flask_scoped_session
from async_scoped_session_ext.migrations import engine_names, targets

from .support.engines import disposing


def test_one_engine_per_name_sync_first(tmp_path: Path) -> None:
    """A name with a sync and an async scoped session gives the sync one's engine, once."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": f"sqlite:///{tmp_path / 'a.db'}"}
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {
        "default": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
        "users": f"sqlite+aiosqlite:///{tmp_path / 'u.db'}",
    }
    metadata = MetaData()
    asession = async_scoped_session(app=app, metadata=metadata)
    session = flask_scoped_session(app=app)  # initialised after the async one
    users = async_scoped_session(app=app, name="users")
    EngineRegistry(lambda key: f"sqlite:///{tmp_path / key}.db", app=app)  # not included
    with disposing(app):
        found = targets(app)
        assert [target.name for target in found] == ["default", "users"]
        assert found[0].engine is session.get_engine(app)
        assert found[0].metadata is metadata  # given to the async one only
        assert found[1].engine is users.get_engine(app) and found[1].metadata is None
        with app.app_context():
            assert engine_names() == ["default", "users"]
        assert asession.get_engine(app).sync_engine is not found[0].engine


def test_target_metadata(tmp_path: Path) -> None:
    """A mapping selects engines; one MetaData needs one engine; unknown names raise."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {
        "default": f"sqlite:///{tmp_path / 'a.db'}",
        "users": f"sqlite:///{tmp_path / 'u.db'}",
    }
    flask_scoped_session(app=app)
    flask_scoped_session(app=app, name="users")
    chosen = MetaData()
    with disposing(app):
        [only] = targets(app, {"users": chosen})
        assert only.name == "users" and only.metadata is chosen
        with pytest.raises(ValueError, match="one MetaData, but the app has 2 engines"):
            targets(app, chosen)
        with pytest.raises(ValueError, match=r"engines the app does not have: \['nope'\]"):
            targets(app, {"nope": chosen})


def test_errors(tmp_path: Path) -> None:
    """Two metadata for one name, no scoped session, no app context: each says the fix."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINES"] = {"default": f"sqlite:///{tmp_path / 'a.db'}"}
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": f"sqlite+aiosqlite:///{tmp_path}/a"}
    flask_scoped_session(app=app, metadata=MetaData())
    async_scoped_session(app=app, metadata=MetaData())
    with disposing(app):
        with pytest.raises(ValueError, match="were given different metadata= objects"):
            targets(app)
    with pytest.raises(RuntimeError, match="no named scoped session"):
        targets(Flask(__name__))
    with pytest.raises(RuntimeError, match="no app context is pushed"):
        targets()
