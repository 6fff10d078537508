"""A flask-debugtoolbar panel that lists the request's recorded queries.

Flask only (flask-debugtoolbar is a Flask extension), sync and async views. List it in
``DEBUG_TB_PANELS``, and turn recording on (flask-debugtoolbar turns it on in debug mode,
unless the app set ``SQLALCHEMY_RECORD_QUERIES`` itself)::

    app.config["SQLALCHEMY_RECORD_QUERIES"] = True
    app.config["DEBUG_TB_PANELS"] = [
        "flask_debugtoolbar.panels.timer.TimerDebugPanel",
        "flask_debugtoolbar.panels.request_vars.RequestVarsDebugPanel",
        "async_scoped_session_ext.debugtoolbar.QueriesPanel",
    ]
    DebugToolbarExtension(app)

Needs the ``debugtoolbar`` extra (``flask-debugtoolbar``). flask-debugtoolbar's own
SQLAlchemy panel reads Flask-SQLAlchemy's recorder, which this library does not use: this
panel replaces it.

flask-debugtoolbar calls the view without Flask's ``ensure_sync``, so an ``async def`` view
fails under it with "the view function did not return a valid response ... a coroutine".
This panel runs such a view the way Flask does (``app.ensure_sync``: on the library's shared
loop once the app has an async scoped session), so async views work whenever the toolbar is
shown and this panel is listed.
"""

from __future__ import annotations

import functools
import inspect
import typing as t
import weakref

from flask import current_app
from flask_debugtoolbar.panels import DebugPanel
from flask_debugtoolbar.utils import format_fname, format_sql
from jinja2 import Environment, PackageLoader

from .record_queries import RECORD_QUERIES_KEY, get_recorded_queries

if t.TYPE_CHECKING:
    import collections.abc as cabc

    from werkzeug import Request

__all__ = ["QueriesPanel"]

#: The toolbar's Jinja environment, overlaid with a loader of this package's templates.
_environments: weakref.WeakKeyDictionary[Environment, Environment] = weakref.WeakKeyDictionary()


def _environment(toolbar: Environment) -> Environment:
    """The toolbar's environment (its filters, escaping) loading this package's templates."""
    overlay = _environments.get(toolbar)
    if overlay is None:
        loader = PackageLoader("async_scoped_session_ext", "templates")
        overlay = _environments.setdefault(toolbar, toolbar.overlay(loader=loader))
    return overlay


class QueriesPanel(DebugPanel):
    """The SQL statements of the request, each with its duration and the line that ran it.

    What :func:`~async_scoped_session_ext.record_queries.get_recorded_queries` returns at
    the end of the request (the toolbar renders in ``after_request``, in the request's app
    context).
    """

    name = "Queries"  # its DOM id: flDebugQueriesPanel
    has_content = True

    def process_view(
        self,
        request: Request,
        view_func: cabc.Callable[..., t.Any],
        view_kwargs: dict[str, t.Any],
    ) -> cabc.Callable[..., t.Any] | None:
        """Await what an ``async def`` view returns, as Flask's own dispatch would."""

        @functools.wraps(view_func)
        def view(**kwargs: t.Any) -> t.Any:
            result = view_func(**kwargs)
            if inspect.iscoroutine(result):
                return current_app.ensure_sync(_awaited)(result)
            return result

        return view

    def nav_title(self) -> str:
        return "Queries"

    def nav_subtitle(self) -> str:
        if not _recording():
            return "recording off"
        queries = get_recorded_queries()
        total = sum(query.duration for query in queries)
        plural = "query" if len(queries) == 1 else "queries"
        return f"{len(queries)} {plural} in {total * 1000:.2f} ms"

    def title(self) -> str:
        return "SQL queries of this request"

    def url(self) -> str:
        return ""

    def content(self) -> str:
        queries = get_recorded_queries()
        rows = [
            {
                "duration": query.duration,
                "sql": format_sql(query.statement, query.parameters),
                "parameters": repr(query.parameters),
                "location": format_fname(query.location),
                "location_long": query.location,
            }
            for query in queries
        ]
        template = _environment(self.jinja_env).get_template("debugtoolbar/queries.html")
        return template.render(
            recording=_recording(),
            queries=rows,
            total=sum(query.duration for query in queries),
        )


def _recording() -> bool:
    return bool(current_app.config.get(RECORD_QUERIES_KEY, False))


async def _awaited(coro: cabc.Awaitable[t.Any]) -> t.Any:
    return await coro
