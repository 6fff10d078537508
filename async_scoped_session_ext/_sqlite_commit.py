"""A failed SQLite ``COMMIT`` ends its transaction, as a failed PostgreSQL one does.

SQLite keeps a transaction open when its ``COMMIT`` fails (a deferred foreign key, say:
"the transaction remains active"). SQLAlchemy takes a failed commit for the end of the
transaction and does not roll the connection back when it returns to the pool, so the
pooled connection stays inside the failed transaction: it holds the database's write lock
("database is locked" for every other connection) and shows its uncommitted rows to the
next request that gets it. A ``handle_error`` listener (a documented SQLAlchemy event) on
each SQLite engine the library takes charge of rolls such a connection back at once.
"""

from __future__ import annotations

import contextlib
import typing as t

from sqlalchemy import event

if t.TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import ExceptionContext


def end_failed_commits(engine: Engine) -> None:
    """Roll back what a failed ``COMMIT`` leaves open on *engine* (SQLite); once per engine."""
    if engine.dialect.name == "sqlite" and not event.contains(engine, "handle_error", _end):
        event.listen(engine, "handle_error", _end)


def _end(context: ExceptionContext) -> None:
    connection = context.connection
    if context.statement is not None or connection is None or connection.invalidated:
        return  # a statement failed (its transaction goes on), or nothing is left to end
    dbapi_connection = connection.connection.dbapi_connection
    # pysqlite's connection itself; aiosqlite's, behind SQLAlchemy's adapter.
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    if getattr(driver, "in_transaction", False):  # a failed COMMIT left it open
        with contextlib.suppress(Exception):  # the commit's own error is the one to raise
            dbapi_connection.rollback()  # type: ignore[union-attr]
