"""Development tasks: ``.venv/bin/python -m nox -s tests``, ``-s demo``, ``-s lint``,
``-s typing``, ``-s build``, ``-s wheel``; see docs/contributing.md."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

nox.needs_version = ">=2024.10.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typing"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
EXTRAS = ".[quart,asyncpg,aiosqlite,psycopg]"


#: The package's coverage floors, in percent, enforced by ``nox -s tests``.
COVERAGE_FLOORS = {"lines": 97.0, "branches": 95.0}


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on SQLite and PostgreSQL (ASSE_POSTGRES_URL) under coverage, child
    interpreters and forks included; report per module; the whole suite fails below
    ``COVERAGE_FLOORS`` for lines or branches of the package."""
    # One run for both: the suite (about 1,200 tests) takes 5 minutes alone and 9 under
    # coverage, and CI must stay under 20 minutes. The installed artifact is tested by
    # 'nox -s wheel'.
    # Editable: every process the tests start, wherever its working directory, imports the
    # package from the checkout, the one coverage measures.
    session.install(
        "-e", EXTRAS, "coverage>=7.10", *nox.project.dependency_groups(PYPROJECT, "test")
    )
    session.run("coverage", "erase")
    # 'coverage run', not pytest-cov: the plugin's pytest11 entry point imports the package
    # before pytest-cov would start measuring. pyproject.toml's [tool.coverage.run] patches
    # subprocess, fork and os._exit, so servers, at-exit scripts and forked workers count.
    # An absolute data file: a child started in another directory (pytester's inner runs)
    # still writes its data beside ours, for 'coverage combine'.
    data_file = str(Path(".coverage").resolve())
    session.run(
        "coverage", "run", "-m", "pytest", *session.posargs, env={"COVERAGE_FILE": data_file}
    )
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report")
    report = Path(session.create_tmp()) / "coverage.json"
    session.run("coverage", "json", "--quiet", "-o", str(report))
    if session.posargs:  # a part of the suite: report only, the floors are for the whole
        return
    _require_coverage(session, json.loads(report.read_text())["totals"])


def _require_coverage(session: nox.Session, totals: dict[str, float]) -> None:
    """Fail unless the line and the branch coverage each reach their floor."""
    measured = {
        "lines": 100 * totals["covered_lines"] / max(totals["num_statements"], 1),
        "branches": 100 * totals["covered_branches"] / max(totals["num_branches"], 1),
    }
    summary = ", ".join(
        f"{kind} {measured[kind]:.2f} % (floor {COVERAGE_FLOORS[kind]} %)"
        for kind in COVERAGE_FLOORS
    )
    session.log(f"coverage of async_scoped_session_ext: {summary}")
    if any(measured[kind] < floor for kind, floor in COVERAGE_FLOORS.items()):
        session.error(
            f"Coverage below its floor: {summary}. The report above names the missing lines"
            " and branches ('12->15': the branch from line 12 to line 15 was never taken);"
            " add tests that take them."
        )


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """Type-check with mypy --strict and pyright; require 100% type completeness."""
    session.install(EXTRAS, "nox", *nox.project.dependency_groups(PYPROJECT, "typing"))
    session.run("mypy", *session.posargs)
    session.run("pyright", "-p", "typing_tests")  # the API as pyright users see it
    _require_complete_types(session, "async_scoped_session_ext")


def _require_complete_types(session: nox.Session, package: str) -> None:
    """Fail unless ``pyright --verifytypes`` knows the type of every public symbol."""
    output = session.run(
        *("pyright", "--verifytypes", package, "--ignoreexternal", "--outputjson"),
        silent=True,
        stderr=None,  # only the JSON report is captured
        success_codes=[0, 1],  # 1: symbols with unknown types, reported below
    )
    if output is None:  # --install-only: nothing ran
        return
    report = json.loads(output)["typeCompleteness"]
    problems = [
        f"{where.get('file', '?')}:{where.get('range', {}).get('start', {}).get('line', -1) + 1}:"
        f" {symbol['name']}: {where['message']}"
        for symbol in report["symbols"]
        for where in symbol["diagnostics"]
        if where["severity"] == "error"
    ]
    score = report["completenessScore"]
    session.log(f"pyright --verifytypes {package}: type completeness {score:.1%}")
    if problems or score < 1:
        session.error("\n".join(["Type completeness must be 100%:", *problems]))


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Build the HTML docs with Sphinx into docs/_build/html; any warning fails the build."""
    session.install(".[quart,debugtoolbar]", *nox.project.dependency_groups(PYPROJECT, "docs"))
    # A fresh build every time: Sphinx re-reads only changed pages, so an incremental build
    # would not repeat the warnings of unchanged ones.
    shutil.rmtree("docs/_build", ignore_errors=True)
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """Run the example Quart and Flask todo apps on embedded SQLite (--serve to keep serving)."""
    session.install(".[quart,aiosqlite]", "hypercorn", "httpx")
    session.run("python", "examples/demo.py", *session.posargs)


# -- build: the artifacts, and the example apps run against the wheel ---------------------

DIST = Path("dist")


@nox.session(default=False)
def build(session: nox.Session) -> None:
    """Build the sdist and the wheel into dist/; check them with twine; require LICENSE in both."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "build"))
    shutil.rmtree(DIST, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(DIST))
    artifacts = sorted(str(path) for path in DIST.iterdir())
    session.run("twine", "check", "--strict", *artifacts)
    _require_license(session)


def _require_license(session: nox.Session) -> None:
    """Fail unless the wheel and the sdist each ship the LICENSE file."""
    (wheel,) = DIST.glob("*.whl")
    (sdist,) = DIST.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = any(name.endswith(".dist-info/licenses/LICENSE") for name in archive.namelist())
    with tarfile.open(sdist) as archive:
        in_sdist = any(
            name.count("/") == 1 and name.endswith("/LICENSE") for name in archive.getnames()
        )
    missing = [path.name for path, found in ((wheel, in_wheel), (sdist, in_sdist)) if not found]
    if missing:
        session.error(
            f'LICENSE is missing from {", ".join(missing)}: keep license-files = ["LICENSE"]'
            ' in pyproject.toml\'s [project] and "LICENSE" in [tool.flit.sdist] include.'
        )
    session.log(f"LICENSE is in {wheel.name} and {sdist.name}")


#: Run in a directory outside the checkout: the package must come from the installed wheel.
FROM_THE_WHEEL = """
import runpy, sys, sysconfig
from pathlib import Path
import async_scoped_session_ext
where = Path(async_scoped_session_ext.__file__).resolve()
if not where.is_relative_to(Path(sysconfig.get_paths()["purelib"]).resolve()):
    sys.exit(f"async_scoped_session_ext was imported from {where}, not from the wheel")
print(f"async_scoped_session_ext from {where}", flush=True)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
#: The sync example app through Flask's test client, for the install without greenlet.
SYNC_ONLY_DEMO = """
import importlib.util, sys, tempfile
from examples.flask_todo.app import create_app, engine_of
if importlib.util.find_spec("greenlet") is not None:
    sys.exit("greenlet is installed: a sync-only install must not need it")
with tempfile.TemporaryDirectory() as directory:
    app = create_app(f"sqlite:///{directory}/todo.db")
    client = app.test_client()
    for title in ("Buy milk", "Write the README"):
        print(client.post("/todos", json={"title": title}).json)
    assert [todo["title"] for todo in client.get("/todos").json] == ["Buy milk", "Write the README"]
    engine_of(app).dispose()
print("the sync Flask example ran without greenlet")
"""


@nox.session(default=False, requires=["build"])
@nox.parametrize("install", ["sync-only", "async"])
def wheel(session: nox.Session, install: str) -> None:
    """Install the built wheel (no extras, so no greenlet; or [quart,aiosqlite]) and run the
    example apps against it, from a directory where the checkout is not importable."""
    (built,) = DIST.glob("*.whl")
    if install == "async":
        session.install(f"{built.resolve()}[quart,aiosqlite]", "hypercorn", "httpx")
    else:
        session.install(str(built.resolve()))
    with tempfile.TemporaryDirectory(prefix="asse-wheel-") as directory:
        shutil.copytree("examples", Path(directory, "examples"))
        Path(directory, "sync_only_demo.py").write_text(SYNC_ONLY_DEMO)
        script = "examples/demo.py" if install == "async" else "sync_only_demo.py"
        with session.chdir(directory):
            session.run("python", "-c", FROM_THE_WHEEL, script)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmark ours against hand-written sessions and other extensions; write bench/results."""
    session.install(EXTRAS, *nox.project.dependency_groups(PYPROJECT, "bench"))
    session.run("python", "-m", "bench", *session.posargs)
    _bench_load(session)


#: ``nox -s bench`` options that ``python -m bench.load`` takes too.
BENCH_LOAD_OPTIONS = ("--quick", "--no-postgres")


def _bench_load(session: nox.Session) -> None:
    """Run ``python -m bench.load`` (wrk against gunicorn and hypercorn) after the in-process
    bench; install wrk with apt-get when it is missing and this is root, else say why not."""
    if {"--no-wire", "--help", "-h"} & set(session.posargs):
        session.log("bench.load skipped: --no-wire or --help")
        return
    if shutil.which("wrk") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        install = "apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk)"
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run_install("sh", "-c", install, external=True, env=env, success_codes=range(256))
    if shutil.which("wrk") is None:
        session.warn(
            "bench.load skipped: wrk is not installed; install it as root: apt-get install wrk"
        )
        return
    session.install("gunicorn>=22.0")
    options = [option for option in session.posargs if option in BENCH_LOAD_OPTIONS]
    session.run("python", "-m", "bench.load", *options)


@nox.session(default=False)
def stress(session: nox.Session) -> None:
    """Stress a hypercorn-served Quart app on PostgreSQL with faults; report leaks and memory."""
    session.install(EXTRAS, *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("python", "-m", "stress", *session.posargs)


# -- compat: the version matrix -----------------------------------------------------------


def _declared_floors() -> dict[str, str]:
    """Each runtime dependency pinned to its floor in pyproject.toml: ``flask==2.3``, ..."""
    project = PYPROJECT["project"]
    declared = [*project["dependencies"]]
    for requirements in project["optional-dependencies"].values():
        declared += requirements
    floors: dict[str, str] = {}
    for text in declared:
        requirement = Requirement(text)
        lowest = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if lowest:
            extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
            floors[canonicalize_name(requirement.name)] = f"{requirement.name}{extras}=={lowest[0]}"
    return floors


@dataclasses.dataclass(frozen=True)
class CompatCell:
    """Pins added to the test dependencies, and packages left out of them."""

    pins: list[str]
    without: frozenset[str] = frozenset()
    #: Floors the test tools cannot be installed with: checked by importing the package.
    import_only: list[str] = dataclasses.field(default_factory=list)
    #: Wheels of unreleased versions (file names in ``_unreleased_wheels()``'s directory),
    #: installed over the test dependencies.
    wheels: list[str] = dataclasses.field(default_factory=list)
    #: Warning filters for this cell's run, its child interpreters included.
    warning_filters: list[str] = dataclasses.field(default_factory=list)


FLOORS = _declared_floors()
# typing-extensions' floor would hold pytest-asyncio at 1.1 (1.2 needs typing-extensions 4.12),
# which leaves an event loop unclosed at exit: that floor is checked by an import instead.
FLOORS_IMPORTED_ONLY = [FLOORS.pop("typing-extensions")]
COMPAT_CELLS = {
    # Every floor; Quart's needs Flask >= 3.0 and Werkzeug >= 3.0.
    "oldest": CompatCell(
        [*{**FLOORS, "flask": "flask==3.0.0", "werkzeug": "werkzeug==3.0.0"}.values()],
        # Flask-SQLAlchemy 3.1 needs SQLAlchemy >= 2.0.16 (the blog example's original).
        without=frozenset({"flask-sqlalchemy"}),
        import_only=FLOORS_IMPORTED_ONLY,
    ),
    # Flask's own floor, without Quart (its tests are skipped there).
    "flask-2.3": CompatCell(
        [pin for name, pin in FLOORS.items() if name != "quart"],
        without=frozenset({"quart", "flask-sqlalchemy"}),
        import_only=FLOORS_IMPORTED_ONLY,
    ),
    "sqlalchemy-2.0": CompatCell(["sqlalchemy[asyncio]>=2.0,<2.1"]),
    "sqlalchemy-2.1": CompatCell(["sqlalchemy[asyncio]>=2.1,<2.2"]),
    "newest": CompatCell([]),
    # Flask and Werkzeug main (3.2.0.dev0), from wheels installed over the newest releases.
    "flask-main": CompatCell(
        [],
        wheels=["flask-3.2.0.dev0-py3-none-any.whl", "werkzeug-3.2.0.dev0-py3-none-any.whl"],
        # Quart 0.22's quart/wrappers/response.py does 'from werkzeug.http import
        # parse_etags', which Werkzeug 3.2 deprecates. werkzeug.http's module __getattr__
        # warns with stacklevel=2, so the warning belongs to the importing module,
        # quart.wrappers.response, not to werkzeug.http (a filter on werkzeug.http does not
        # match it). A -W / PYTHONWARNINGS module field is an exact name, not a regex
        # (Python escapes it and appends \Z; so does pytest's -W), so 'quart.*' would match
        # nothing: each module that triggers a third-party DeprecationWarning is named here.
        # Warnings from any other module, async_scoped_session_ext and the tests included,
        # stay errors.
        warning_filters=["ignore::DeprecationWarning:quart.wrappers.response"],
    ),
}
COMPAT_EXTRAS = ("quart", "asyncpg", "aiosqlite", "psycopg")
COMPAT_SHOWN = """flask werkzeug quart sqlalchemy typing-extensions asyncpg aiosqlite psycopg
greenlet click blinker asgiref hypercorn httpx pytest pytest-asyncio hypothesis""".split()
SHOW_VERSIONS = """
import importlib.metadata, sys
for name in sys.argv[1:]:
    try:
        print(f"{name:>18} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        print(f"{name:>18} (not installed)")
"""
IMPORT_ALL = (
    "import async_scoped_session_ext.pgbouncer, async_scoped_session_ext.replicas,"
    " async_scoped_session_ext.record_queries, async_scoped_session_ext.debugtoolbar"
)
UNRELEASED_WHEELS = "ASSE_FLASK_MAIN_WHEELS"  # a directory; ../shared/wheels when unset


def _unreleased_wheels(session: nox.Session, names: list[str]) -> list[str]:
    """The paths of the wheels *names*; skip the session without them (fail it with CI=true)."""
    directory = Path(
        os.environ.get(UNRELEASED_WHEELS)
        or Path(__file__).resolve().parent.parent / "shared" / "wheels"
    )
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        reason = (
            f"{', '.join(missing)} not found in {directory}: build these wheels of unreleased"
            " versions there with 'pip wheel --no-deps' from the projects' main branches, or"
            f" set {UNRELEASED_WHEELS} to the directory that holds them"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            session.error(reason)
        session.skip(reason)
    return [str(directory / name) for name in names]


@nox.session(default=False)
@nox.parametrize("cell", list(COMPAT_CELLS), ids=list(COMPAT_CELLS))
def compat(session: nox.Session, cell: str) -> None:
    """Run the tests on the oldest and newest Flask, Werkzeug, Quart, SQLAlchemy; on Flask main."""
    _compat_run(session, COMPAT_CELLS[cell])


#: The Pythons the classifiers name besides the one the other sessions use (3.11).
NEWER_PYTHONS = ["3.12", "3.13"]


@nox.session(python=NEWER_PYTHONS, default=False)
def python(session: nox.Session) -> None:
    """Run the tests (as the compat cells do) on the newest releases, on a newer Python.

    Needs ``python3.12`` / ``python3.13`` on the PATH (pyenv: ``PYENV_VERSION`` naming them,
    as .ci/run sets it).
    """
    _compat_run(session, COMPAT_CELLS["newest"])


def _compat_run(session: nox.Session, spec: CompatCell) -> None:
    wheels = _unreleased_wheels(session, spec.wheels) if spec.wheels else []
    extras = ",".join(extra for extra in COMPAT_EXTRAS if extra not in spec.without)
    if spec.import_only:  # first: the test tools then upgrade these
        session.install(f".[{extras}]", *spec.pins, *spec.import_only)
        session.run("python", "-c", IMPORT_ALL)
    tools = [
        text
        for text in nox.project.dependency_groups(PYPROJECT, "test")
        if canonicalize_name(Requirement(text).name) not in spec.without
    ]
    session.install(f".[{extras}]", *tools, *spec.pins)
    if wheels:  # last, so that nothing installed after them brings the releases back
        session.install(*wheels)
    session.run("python", "-c", SHOW_VERSIONS, *COMPAT_SHOWN)
    # The filters go to pytest as -W (its filterwarnings = ["error"] overrides PYTHONWARNINGS)
    # and to the interpreters the tests start as PYTHONWARNINGS (tests/conftest.py's
    # child_environ() keeps them after the "error" those children get).
    filters = spec.warning_filters
    # The load and soak tests (@pytest.mark.slow) run in 'nox -s tests', on the newest
    # releases; here they would add about 3 minutes per cell to CI. Those that stop a
    # standby run here too (15 s): how a driver reports a cut connection differs by release.
    session.run(
        "pytest",
        *(f"-W{filter_}" for filter_ in filters),
        "-m",
        "not slow or standby",
        *session.posargs,
        env={"PYTHONWARNINGS": ",".join(filters)} if filters else {},
    )
