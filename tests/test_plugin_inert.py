"""The plugin's entry point, loaded by every pytest run, imports nothing heavy until enabled."""

from __future__ import annotations

import json

import pytest

from .support.environment import RUN_WARNINGS
from .support.plugin_project import APP_MODULE, BASE_INI, INI

pytest_plugins = ["pytester"]

# Prints the modules of these packages that are loaded once the test runs. Compared with a
# run with the plugin disabled, not with nothing: a tool may load some itself (coverage's
# greenlet support imports greenlet).
MODULES_LOADED = """
import json
import sys

HEAVY = {"sqlalchemy", "flask", "werkzeug", "greenlet", "quart", "async_scoped_session_ext"}


def test_modules_loaded():
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)
    print("LOADED=" + json.dumps(loaded))
"""
PLUGIN = "async_scoped_session_ext.pytest_plugin"


def modules_loaded(pytester: pytest.Pytester, *options: str) -> set[str]:
    """Run the test above in a fresh interpreter; the modules it found loaded."""
    pytester.makepyfile(test_modules=MODULES_LOADED)
    warnings = [f"-W{spec}" for spec in RUN_WARNINGS]
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", *warnings, *options)
    result.assert_outcomes(passed=1)
    (line,) = [line for line in result.outlines if "LOADED=" in line]
    return set(json.loads(line.partition("LOADED=")[2]))


def test_inert_plugin_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    """Without ``asse_app``, the plugin adds to a pytest run no module of SQLAlchemy, Flask,
    Werkzeug, greenlet nor Quart, and of the package only its lazy ``__init__`` and the
    entry point itself: the same as a run with the plugin disabled, plus those two."""
    pytester.makeini(BASE_INI)
    inert = modules_loaded(pytester)
    disabled = modules_loaded(pytester, "-p", "no:async_scoped_session_ext")
    assert PLUGIN not in disabled
    assert inert - disabled == {"async_scoped_session_ext", PLUGIN}


def test_enabled_plugin_imports_the_fixtures(pytester: pytest.Pytester) -> None:
    """With ``asse_app`` set, the same check sees the fixtures and SQLAlchemy loaded."""
    pytester.makeini(INI.format(kind="flask", url_option="asse_database_url", url="sqlite://"))
    pytester.makepyfile(app_under_test=APP_MODULE)  # collected too (*_test.py): no matter
    loaded = modules_loaded(pytester)
    assert {PLUGIN, "async_scoped_session_ext.fixtures", "sqlalchemy", "flask"} <= loaded
