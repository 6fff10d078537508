"""``get_or_404``, ``first_or_404``, ``one_or_404`` and ``paginate`` on both scoped sessions.

Each method only executes (``SyncPages``: returns; ``AsyncPages``: awaits the scoped
session's own, guarded, ``execute`` and ``get``); what it decides is in ``_pages``. The
names and parameters are Flask-SQLAlchemy 3.1's.
"""

from __future__ import annotations

import typing as t

from ._pages import found_or_404, one_or_404, page_query

if t.TYPE_CHECKING:
    from sqlalchemy import Executable, Result, Select
    from sqlalchemy.sql.selectable import TypedReturnsRows

    from ._pages import AnySelect
    from .pagination import Pagination

_T = t.TypeVar("_T")
_O = t.TypeVar("_O", bound=object)


class _Runs(t.Protocol):
    """What ``SyncPages`` uses of ``flask_scoped_session``."""

    def execute(self, statement: Executable) -> Result[t.Any]: ...
    def get(self, entity: type[_O], ident: t.Any, **kwargs: t.Any) -> _O | None: ...


class _AwaitsRuns(t.Protocol):
    """What ``AsyncPages`` uses of ``async_scoped_session``."""

    async def execute(self, statement: Executable) -> Result[t.Any]: ...
    async def get(self, entity: type[_O], ident: t.Any, **kwargs: t.Any) -> _O | None: ...


class SyncPages:
    """The 404 helpers and ``paginate()`` of ``flask_scoped_session``."""

    def get_or_404(
        self, entity: type[_O], ident: t.Any, *, description: str | None = None, **kwargs: t.Any
    ) -> _O:
        """``get(entity, ident, **kwargs)``, or a ``404 Not Found`` instead of ``None``.

        :param description: the text of the error page (default: werkzeug's).
        :raises werkzeug.exceptions.NotFound: when there is no such row.
        """
        return found_or_404(_runs(self).get(entity, ident, **kwargs), description)

    @t.overload
    def first_or_404(
        self, statement: TypedReturnsRows[_T], *, description: str | None = None
    ) -> _T: ...
    @t.overload
    def first_or_404(self, statement: Executable, *, description: str | None = None) -> t.Any: ...
    def first_or_404(self, statement: Executable, *, description: str | None = None) -> t.Any:
        """The first row's first column (``execute(statement).scalar()``), or a 404 for
        ``None``.

        :raises werkzeug.exceptions.NotFound: when there is no row (or its value is ``None``).
        """
        return found_or_404(_runs(self).execute(statement).scalar(), description)

    @t.overload
    def one_or_404(
        self, statement: TypedReturnsRows[_T], *, description: str | None = None
    ) -> _T: ...
    @t.overload
    def one_or_404(self, statement: Executable, *, description: str | None = None) -> t.Any: ...
    def one_or_404(self, statement: Executable, *, description: str | None = None) -> t.Any:
        """The only row's first column (``execute(statement).scalar_one()``), or a 404.

        :raises werkzeug.exceptions.NotFound: when there is no row, or more than one.
        """
        return one_or_404(_runs(self).execute(statement), description)

    @t.overload
    def paginate(
        self,
        select: Select[_T],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[_T]: ...
    @t.overload
    def paginate(
        self,
        select: AnySelect,
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[t.Any]: ...
    def paginate(
        self,
        select: AnySelect,
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[t.Any]:
        """One page of *select*'s items (first column, unique), and the total count.

        :param page: the page's number, from 1 (default: the request's ``page`` query
            argument, else 1).
        :param per_page: the most items on a page (default: the request's ``per_page``
            query argument, else 20).
        :param max_per_page: a cap on *per_page*, for a value the client chose
            (``None``: no cap).
        :param error_out: a 404 for a *page* or *per_page* that is not a whole number of 1
            or more, and for an empty page other than the first; without it, the default
            replaces an invalid value and a page past the last has no items.
        :param count: run a second query for :attr:`.Pagination.total`; ``False`` leaves
            it ``None`` (and :attr:`.Pagination.pages` 0).
        :raises werkzeug.exceptions.NotFound: as *error_out* says.
        """
        query = page_query(select, page, per_page, max_per_page, error_out, count)
        items = query.items_of(_runs(self).execute(query.items))
        total = None if query.count is None else _runs(self).execute(query.count).scalar_one()
        return query.pagination(items, total)


class AsyncPages:
    """The 404 helpers and ``paginate()`` of ``async_scoped_session``: awaited."""

    async def get_or_404(
        self, entity: type[_O], ident: t.Any, *, description: str | None = None, **kwargs: t.Any
    ) -> _O:
        """``await get(entity, ident, **kwargs)``, or a ``404 Not Found`` instead of ``None``.

        :param description: the text of the error page (default: werkzeug's).
        :raises werkzeug.exceptions.NotFound: when there is no such row.
        """
        return found_or_404(await _awaits(self).get(entity, ident, **kwargs), description)

    @t.overload
    async def first_or_404(
        self, statement: TypedReturnsRows[_T], *, description: str | None = None
    ) -> _T: ...
    @t.overload
    async def first_or_404(
        self, statement: Executable, *, description: str | None = None
    ) -> t.Any: ...
    async def first_or_404(self, statement: Executable, *, description: str | None = None) -> t.Any:
        """The first row's first column (``(await execute(statement)).scalar()``), or a
        404 for ``None``.

        :raises werkzeug.exceptions.NotFound: when there is no row (or its value is ``None``).
        """
        return found_or_404((await _awaits(self).execute(statement)).scalar(), description)

    @t.overload
    async def one_or_404(
        self, statement: TypedReturnsRows[_T], *, description: str | None = None
    ) -> _T: ...
    @t.overload
    async def one_or_404(
        self, statement: Executable, *, description: str | None = None
    ) -> t.Any: ...
    async def one_or_404(self, statement: Executable, *, description: str | None = None) -> t.Any:
        """The only row's first column (``(await execute(statement)).scalar_one()``), or a 404.

        :raises werkzeug.exceptions.NotFound: when there is no row, or more than one.
        """
        return one_or_404(await _awaits(self).execute(statement), description)

    @t.overload
    async def paginate(
        self,
        select: Select[_T],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[_T]: ...
    @t.overload
    async def paginate(
        self,
        select: AnySelect,
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[t.Any]: ...
    async def paginate(
        self,
        select: AnySelect,
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[t.Any]:
        """One page of *select*'s items, when awaited; the parameters are the sync
        :meth:`~async_scoped_session_ext.flask_scoped_session.paginate`'s.

        :raises werkzeug.exceptions.NotFound: as *error_out* says.
        """
        query = page_query(select, page, per_page, max_per_page, error_out, count)
        items = query.items_of(await _awaits(self).execute(query.items))
        counted = None if query.count is None else await _awaits(self).execute(query.count)
        return query.pagination(items, None if counted is None else counted.scalar_one())


def _runs(scoped: SyncPages) -> _Runs:
    # SyncPages is only ever a base of flask_scoped_session, which has these.
    return t.cast(_Runs, scoped)


def _awaits(scoped: AsyncPages) -> _AwaitsRuns:
    # AsyncPages is only ever a base of async_scoped_session, which has these.
    return t.cast(_AwaitsRuns, scoped)
