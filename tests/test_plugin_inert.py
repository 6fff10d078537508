"""The plugin's entry point, loaded by every pytest run, imports nothing heavy until enabled."""

from __future__ import annotations

import pytest

from .support.environment import RUN_WARNINGS
from .support.plugin_project import APP_MODULE, BASE_INI, INI

pytest_plugins = ["pytester"]

# What the package's own modules would import: none of it may load for an inert plugin.
MODULES_LOADED = """
import sys

PLUGIN = "async_scoped_session_ext.pytest_plugin"
HEAVY = {"sqlalchemy", "flask", "werkzeug", "greenlet", "quart", "async_scoped_session_ext"}


def test_modules_loaded():
    loaded = {name for name in sys.modules if name.split(".")[0] in HEAVY}
    print("LOADED", sorted(loaded))
    assert PLUGIN in loaded  # the entry point ran
    assert sorted(loaded - {"async_scoped_session_ext", PLUGIN}) == EXPECTED
"""


def run(pytester: pytest.Pytester, ini: str, expected: str) -> pytest.RunResult:
    pytester.makeini(ini)
    pytester.makepyfile(test_modules=MODULES_LOADED.replace("EXPECTED", expected))
    # A fresh interpreter: this run has imported everything already.
    warnings = [f"-W{spec}" for spec in RUN_WARNINGS]
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", *warnings)


def test_inert_plugin_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    """Without ``asse_app``, a pytest run with the plugin installed has imported no
    SQLAlchemy, Flask, Werkzeug, greenlet nor Quart, and of the package only its lazy
    ``__init__`` and the entry point."""
    run(pytester, BASE_INI, "[]").assert_outcomes(passed=1)


def test_enabled_plugin_imports_the_fixtures(pytester: pytest.Pytester) -> None:
    """With ``asse_app`` set, the same check sees the fixtures and SQLAlchemy loaded."""
    ini = INI.format(kind="flask", url_option="asse_database_url", url="sqlite://")
    pytester.makepyfile(app_under_test=APP_MODULE)  # collected too (*_test.py): no matter
    result = run(pytester, ini, "[]")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*LOADED *'async_scoped_session_ext.fixtures'*'sqlalchemy'*"])
