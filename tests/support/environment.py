"""What this test run has: CI or not, Quart or not, the warning filters it was given."""

from __future__ import annotations

import importlib.util
import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

#: Quart needs Flask >= 3.0: the compat cell for Flask 2.3 runs without it.
HAS_QUART = importlib.util.find_spec("quart") is not None
QUART_MISSING = "needs Quart, which is not installed (Quart >= 0.19 needs Flask >= 3.0)"
needs_quart = pytest.mark.skipif(not HAS_QUART, reason=QUART_MISSING)

#: The warning filters this run was given in PYTHONWARNINGS: the compat cell on Flask main
#: ignores a third-party DeprecationWarning so (see noxfile.py).
RUN_WARNINGS = [spec for spec in os.environ.get("PYTHONWARNINGS", "").split(",") if spec]


def child_environ(*warnings: str) -> dict[str, str]:
    """``os.environ`` for a child interpreter, with the filters *warnings* (``-W`` syntax)
    before this run's own (``RUN_WARNINGS``), which thus still apply in the child.

    Pass ``"error"`` here, not as ``python -W error``: ``-W`` filters take precedence over
    PYTHONWARNINGS, and Python drops a ``-W`` filter equal to a PYTHONWARNINGS one as a
    duplicate, so the run's filters cannot be repeated after it.
    """
    return {**os.environ, "PYTHONWARNINGS": ",".join([*warnings, *RUN_WARNINGS])}
