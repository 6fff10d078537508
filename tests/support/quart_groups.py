"""Quart 0.23 (Python 3.13+) raises what its test client meets as an exception group.

Its test client runs the app in a ``TaskGroup``, so an error from a view or a streamed body
arrives as an ``ExceptionGroup`` of one; earlier Quarts raise the error itself. (Its
``AppContext.pop()`` also collects what teardown steps raise into a ``BaseExceptionGroup``:
the library keeps a cancellation out of that one, see ``_frameworks``.) The tests check the
one error inside, whichever the Quart; ``QUART_MERGED_CONTEXTS`` says which Quart this is
(0.23 merged the request and websocket contexts into the app context, as Flask 3.2 does).
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import importlib
import importlib.util
import re

import pytest


def _merged_contexts() -> bool:
    if importlib.util.find_spec("quart") is None:
        return False
    return "RequestContext" not in vars(importlib.import_module("quart.ctx"))


#: Quart >= 0.23: one context class; ``copy_current_request_context`` pushes a copy of it.
QUART_MERGED_CONTEXTS = _merged_contexts()


def sole(error: BaseException) -> BaseException:
    """The one error inside nested single-error groups, or *error* itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


@contextlib.contextmanager
def raises(kind: type[BaseException], match: str | None = None) -> cabc.Iterator[None]:
    """``pytest.raises(kind, match=match)``, through Quart 0.23's groups of one error."""
    try:
        yield
    except BaseException as error:  # checked below, re-raised if it is not the one
        inner = sole(error)
        if not isinstance(inner, kind):
            raise
        if match is not None and not re.search(match, str(inner)):
            raise AssertionError(f"{inner!r} does not match {match!r}") from error
        return
    pytest.fail(f"DID NOT RAISE {kind.__name__}")
