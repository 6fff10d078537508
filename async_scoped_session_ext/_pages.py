"""What the 404 helpers and ``paginate()`` decide, sync and async alike: no I/O here.

The scoped sessions' methods (``_page_methods``) make the one or two ``execute`` calls
(awaited or not) and hand the results to these functions, which resolve the page arguments
from the request, build the statements, decide on a 404 and build the ``Pagination``. The
404 is werkzeug's ``NotFound``, which Flask and Quart both turn into a 404 response.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from werkzeug.exceptions import NotFound

from ._app import get_state
from ._frameworks import current_app_context
from .pagination import Pagination

if t.TYPE_CHECKING:
    from sqlalchemy import Result

    #: Any select: its rows may have any number of columns.
    AnySelect: t.TypeAlias = Select[*tuple[t.Any, ...]]

_T = t.TypeVar("_T")

#: Flask-SQLAlchemy's defaults, outside a request or without the query arguments.
DEFAULT_PAGE, DEFAULT_PER_PAGE = 1, 20


def found_or_404(value: _T | None, description: str | None) -> _T:
    """*value*, or a 404 with *description* when it is ``None``."""
    if value is None:
        raise NotFound(description)
    return value


def one_or_404(result: Result[t.Any], description: str | None) -> t.Any:
    """The only row's first column, or a 404 when there is no row or more than one."""
    try:
        return result.scalar_one()
    except (NoResultFound, MultipleResultsFound) as error:
        raise NotFound(description) from error


@dataclass(frozen=True)
class PageQuery:
    """One ``paginate()`` call, resolved: its page, and the statements to execute."""

    page: int
    per_page: int
    max_per_page: int | None
    error_out: bool
    #: The statement for this page's items (the select, with limit and offset).
    items: AnySelect
    #: The statement counting every item, or ``None`` with ``count=False``.
    count: Select[t.Any] | None

    def items_of(self, result: Result[t.Any]) -> list[t.Any]:
        """The items in *result* (unique, first column), or a 404 for an empty later page.

        Call it before executing :attr:`count`: a page past the last needs no count.
        """
        items = list(result.unique().scalars())
        if not items and self.page != 1 and self.error_out:
            raise NotFound(f"There are no items on page {self.page}.")
        return items

    def pagination(self, items: list[t.Any], total: int | None) -> Pagination[t.Any]:
        """The ``Pagination`` of *items*, with *total* from :attr:`count`'s result."""
        return Pagination(
            items,
            page=self.page,
            per_page=self.per_page,
            total=total,
            max_per_page=self.max_per_page,
        )


def page_query(
    statement: AnySelect,
    page: int | None,
    per_page: int | None,
    max_per_page: int | None,
    error_out: bool,
    count: bool,
) -> PageQuery:
    """Resolve the page arguments (from the request when not given) and build the statements.

    Like Flask-SQLAlchemy 3.1: ``page`` and ``per_page`` come from the request's query
    arguments, then default to 1 and 20; *max_per_page* caps ``per_page``; a value that is
    not a whole number of 1 or more is a 404 with *error_out*, and the default without.
    """
    if max_per_page is not None and max_per_page < 1:
        raise ValueError(
            f"paginate() got max_per_page={max_per_page!r}: a page must be allowed at least"
            " one item. Pass a number of 1 or more, or None for no cap."
        )
    args = _request_args()
    page = _resolve("page", page, args, DEFAULT_PAGE, error_out)
    per_page = _resolve("per_page", per_page, args, DEFAULT_PER_PAGE, error_out)
    if max_per_page is not None:
        per_page = min(per_page, max_per_page)
    items = statement.limit(per_page).offset((page - 1) * per_page)
    counted = None
    if count:
        # Without the order, which a count does not need. Eager loads (whose joins would
        # count rows, not items) are never rendered in a subquery.
        every = statement.order_by(None).subquery()
        counted = select(func.count()).select_from(every)
    return PageQuery(page, per_page, max_per_page, error_out, items, counted)


def _resolve(
    name: str,
    given: int | None,
    args: t.Mapping[str, str] | None,
    default: int,
    error_out: bool,
) -> int:
    """The value of page argument *name*: *given*, else the query argument, else *default*."""
    if given is not None:
        number = given
    elif args is None or name not in args:
        return default
    else:
        try:
            number = int(args[name])
        except ValueError:
            number = 0
    if number >= 1:
        return number
    if error_out:
        raise NotFound(f"Invalid {name!r}: it must be a whole number of 1 or more.")
    return default


def _request_args() -> t.Mapping[str, str] | None:
    """The current request's (or websocket's) query arguments; ``None`` outside one."""
    ctx = current_app_context()
    state = get_state(ctx.app) if ctx is not None else None
    return state.framework.request_args() if state is not None else None
