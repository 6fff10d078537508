"""``Pagination``: one page of a ``select``, as ``paginate()`` returns it.

Both scoped sessions make it (``scoped.paginate(select(Todo))`` in sync Flask,
``await scoped.paginate(select(Todo))`` in Quart and Flask async views), with the
attributes and ``iter_pages()`` of Flask-SQLAlchemy 3.1's. Unlike Flask-SQLAlchemy's, it
never queries: it has no ``prev()`` or ``next()`` (they would have to be awaited in async
code and not in sync code). Ask for the neighbour page instead:
``scoped.paginate(statement, page=pagination.next_num)``.
"""

from __future__ import annotations

import math
import typing as t

_T = t.TypeVar("_T")


class Pagination(t.Generic[_T]):
    """One page of items, and where it lies among the others.

    Made by ``paginate()``; iterating over it iterates over :attr:`items`.

    :param items: the items on this page.
    :param page: this page's number, from 1.
    :param per_page: the most items a page holds.
    :param total: how many items all pages hold; ``None`` when not counted.
    :param max_per_page: the cap that was applied to *per_page* (``None``: no cap).
    """

    def __init__(
        self,
        items: list[_T],
        *,
        page: int,
        per_page: int,
        total: int | None,
        max_per_page: int | None = None,
    ) -> None:
        #: The items on this page.
        self.items: list[_T] = items
        #: This page's number, from 1.
        self.page: int = page
        #: The most items a page holds.
        self.per_page: int = per_page
        #: How many items all pages hold (``None`` with ``count=False``, unless set).
        self.total: int | None = total
        #: The cap that was applied to :attr:`per_page` (``None``: no cap).
        self.max_per_page: int | None = max_per_page

    def __repr__(self) -> str:
        return (
            f"<Pagination page={self.page} per_page={self.per_page} total={self.total}"
            f" items={len(self.items)}>"
        )

    def __iter__(self) -> t.Iterator[_T]:
        return iter(self.items)

    @property
    def first(self) -> int:
        """The number of the first item on this page, from 1; 0 when it has none."""
        if not self.items:
            return 0
        return (self.page - 1) * self.per_page + 1

    @property
    def last(self) -> int:
        """The number of the last item on this page, from 1; 0 when it has none."""
        first = self.first
        return max(first, first + len(self.items) - 1)

    @property
    def pages(self) -> int:
        """How many pages there are; 0 when :attr:`total` is 0 or ``None``."""
        if not self.total:
            return 0
        return math.ceil(self.total / self.per_page)

    @property
    def has_prev(self) -> bool:
        """Whether a page comes before this one."""
        return self.page > 1

    @property
    def prev_num(self) -> int | None:
        """The previous page's number, or ``None`` on the first page."""
        return self.page - 1 if self.has_prev else None

    @property
    def has_next(self) -> bool:
        """Whether a page comes after this one (never, when :attr:`total` is unknown)."""
        return self.page < self.pages

    @property
    def next_num(self) -> int | None:
        """The next page's number, or ``None`` on the last page."""
        return self.page + 1 if self.has_next else None

    def iter_pages(
        self,
        *,
        left_edge: int = 2,
        left_current: int = 2,
        right_current: int = 4,
        right_edge: int = 2,
    ) -> t.Iterator[int | None]:
        """The page numbers to show in a page-links widget, with ``None`` for each gap.

        The first *left_edge* pages, the *left_current* pages before this one, this one,
        the *right_current* pages after it and the last *right_edge* pages, in order and
        each once. With 20 pages on page 7::

            1, 2, None, 5, 6, 7, 8, 9, 10, 11, None, 19, 20
        """
        end = self.pages + 1  # one past the last page
        if end == 1:
            return
        # Three runs of numbers (the left edge, around this page, the right edge); a None
        # where a run starts after a gap. A run may be empty (a page past the last).
        left_stop = min(1 + left_edge, end)
        yield from range(1, left_stop)
        if left_stop == end:
            return
        middle_start = max(left_stop, self.page - left_current)
        middle_stop = min(self.page + right_current + 1, end)
        if middle_start > left_stop:
            yield None
        yield from range(middle_start, middle_stop)
        if middle_stop == end:
            return
        right_start = max(middle_stop, end - right_edge)
        if right_start > middle_stop:
            yield None
        yield from range(right_start, end)
