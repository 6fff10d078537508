"""commit_on_success=True: the context's session is committed before a response < 400 is
sent, and a failing commit answers 500; sync Flask, Flask async and Quart, SQLite and
PostgreSQL."""

from __future__ import annotations

import typing as t

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import flask_scoped_session
from async_scoped_session_ext._context import record_of

from .support import committing
from .support.committing import KINDS, Harness
from .support.environment import HAS_QUART, QUART_MISSING

make_harness = committing.make_harness

MakeHarness: t.TypeAlias = t.Callable[..., Harness]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["ok", "redirect", "handled_ok"])
def test_success_commits(make_harness: MakeHarness, kind: str, how: str) -> None:
    """A 2xx or 3xx answer (also one an error handler made) commits the view's writes."""
    harness = make_harness(kind, commit_on_success=True)
    assert harness.get(f"/add/kept/{how}") == (302 if how == "redirect" else 200)
    assert harness.titles() == ["kept"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("how", "status"), [("abort", 404), ("bad", 400), ("raise", 500), ("handled_bad", 409)]
)
def test_failure_rolls_back(make_harness: MakeHarness, kind: str, how: str, status: int) -> None:
    """A 4xx or 5xx answer, or an exception, leaves the flushed writes rolled back."""
    harness = make_harness(kind, commit_on_success=True)
    assert harness.get(f"/add/lost/{how}") == status
    assert harness.titles() == []


@pytest.mark.parametrize("kind", KINDS)
def test_failing_commit_answers_500(make_harness: MakeHarness, kind: str) -> None:
    """A commit that fails (a foreign key checked at COMMIT) gives a 500, and no row."""
    harness = make_harness(kind, commit_on_success=True)
    assert harness.get("/fail") == 500
    assert harness.titles() == []
    assert harness.get("/add/after/ok") == 200  # the app (and its pool) still works
    assert harness.titles() == ["after"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_view_whose_own_commit_fails_leaves_nothing_behind(
    make_harness: MakeHarness, kind: str
) -> None:
    """Without commit on success: the view's commit fails at COMMIT (a 500), and the next
    request, on the same pooled connection, commits as if nothing had happened. SQLite keeps
    a transaction open when its COMMIT fails, and SQLAlchemy returned that connection to the
    pool inside it: the next commit failed on the same foreign key (sqlite, aiosqlite)."""
    harness = make_harness(kind)
    assert harness.get("/fail/commit") == 500
    assert harness.get("/add/kept/commit") == 200
    assert harness.titles() == ["kept"]


@pytest.mark.parametrize("kind", KINDS)
def test_off_by_default(make_harness: MakeHarness, kind: str) -> None:
    """Without commit_on_success a successful view's uncommitted writes are rolled back."""
    harness = make_harness(kind)
    assert harness.get("/add/lost/ok") == 200
    assert harness.titles() == []


@pytest.mark.parametrize("kind", KINDS)
def test_config_made_factory(make_harness: MakeHarness, kind: str) -> None:
    """A scoped session whose factory is made from the config commits on success too."""
    harness = make_harness(kind, configured=True, commit_on_success=True)
    assert harness.get("/add/kept/ok") == 200
    assert harness.get("/add/lost/bad") == 400
    assert harness.titles() == ["kept"]


@pytest.mark.parametrize("kind", [kind for kind in KINDS if "flask_async" not in str(kind)])
def test_streamed_response(make_harness: MakeHarness, kind: str) -> None:
    """A streamed view's writes before the stream are committed; those made while it
    streams are not (the commit runs before the body is sent)."""
    harness = make_harness(kind, commit_on_success=True)
    assert harness.get("/add/early/stream") == 200
    assert harness.titles() == ["early"]


@pytest.mark.parametrize("kind", KINDS)
def test_no_session_made(make_harness: MakeHarness, kind: str) -> None:
    """A request that never used the session does not get one from the commit."""
    harness = make_harness(kind, commit_on_success=True)
    seen: list[bool] = []

    def check(exc: BaseException | None) -> None:  # after every after_request function
        from async_scoped_session_ext._frameworks import current_app_context

        ctx = current_app_context()
        record = record_of(ctx) if ctx is not None else None
        seen.append(record is not None and bool(record.sessions))

    harness.app.teardown_request(check)
    assert harness.get("/none") == 200
    assert seen == [False]


@pytest.mark.parametrize("kind", KINDS)
def test_unhandled_error_answered_below_400(make_harness: MakeHarness, kind: str) -> None:
    """An unhandled exception that a handler for 500 answers with a 200 is not committed."""
    harness = make_harness(kind, commit_on_success=True)
    harness.app.register_error_handler(500, lambda error: ("sorry", 200))
    assert harness.get("/add/lost/raise") == 200
    assert harness.titles() == []


@pytest.mark.skipif(not HAS_QUART, reason=QUART_MISSING)
async def test_quart_sync_session(sync_engine: Engine) -> None:
    """A sync scoped session in a Quart app commits on success too (in a worker thread)."""
    from quart import Quart

    committing.Base.metadata.create_all(sync_engine)
    app = Quart(__name__)
    scoped = flask_scoped_session(sessionmaker(sync_engine), app, commit_on_success=True)

    @app.route("/<title>/<int:status>")
    def add(title: str, status: int) -> tuple[str, int]:
        scoped.add(committing.Note(title=title))
        return "done", status

    try:
        assert (await app.test_client().get("/kept/201")).status_code == 201
        assert (await app.test_client().get("/lost/409")).status_code == 409
        with sync_engine.connect() as conn:
            assert conn.scalars(select(committing.Note.title)).all() == ["kept"]
    finally:
        committing.Base.metadata.drop_all(sync_engine)
