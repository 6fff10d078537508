"""Sphinx configuration: Markdown pages (MyST), the furo theme, API pages from docstrings.

Build with ``python3 -m nox -s docs``. Nothing here downloads anything at build time: no
intersphinx, no remote images or diagrams.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import typing as t
from importlib.metadata import version as _version

if t.TYPE_CHECKING:
    from sphinx.application import Sphinx

project = "async_scoped_session_ext"
author = "The async_scoped_session_ext developers"
copyright = "the async_scoped_session_ext developers"
release = _version("async-scoped-session-ext")
version = ".".join(release.split(".")[:2])

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]

# MyST: anchors for headings down to ###, so pages can link to "page.md#a-heading".
myst_heading_anchors = 3

# API pages: document what the library defines, not SQLAlchemy's inherited members. Type
# hints go in the signatures ("description" would take a class's parameter types from
# its class attributes, which SQLAlchemy's base classes annotate: session_factory), and
# long signatures get one parameter per line.
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
python_maximum_signature_line_length = 100
add_module_names = False  # the section headings name the modules
autodoc_member_order = "bysource"
autodoc_default_options = {"inherited-members": False}

html_theme = "furo"
# The sidebar shows it in a large font: "async_scoped_session_ext" has no break opportunity
# and wrapped mid-word; the distribution's name breaks at its hyphens.
html_title = "async-scoped-session-ext"
html_static_path = ["_static"]
html_css_files = ["tables.css"]

PACKAGE = "async_scoped_session_ext"
DOCUMENTED_MODULES = [
    PACKAGE,
    f"{PACKAGE}.pgbouncer",
    f"{PACKAGE}.replicas",
    f"{PACKAGE}.testing",
    f"{PACKAGE}.record_queries",
    f"{PACKAGE}.debugtoolbar",
]


def _run_type_checking_blocks() -> None:
    """Run the package modules' ``if t.TYPE_CHECKING:`` blocks in their namespaces.

    The modules use ``from __future__ import annotations`` and import some of the names
    their annotations use (``App``, ``Quart``, ...) only for type checkers. Without those
    names, autodoc cannot evaluate a signature's annotations and prints them as written
    (``t.Mapping[str, t.Any]``). Once every module is imported, the blocks can run without
    import cycles; they only add names.
    """
    for name in DOCUMENTED_MODULES:
        importlib.import_module(name)
    for name, module in list(sys.modules.items()):
        if name != PACKAGE and not name.startswith(f"{PACKAGE}."):
            continue
        tree = ast.parse(inspect.getsource(module))
        for node in tree.body:
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                block = ast.Module(body=node.body, type_ignores=[])
                exec(compile(block, inspect.getfile(module), "exec"), vars(module))


#: Signatures autodoc gets wrong: ``fresh`` is a generator function that contextlib's
#: ``(async)contextmanager`` wraps, so its annotation is the generator's, not what it returns.
FIXED_SIGNATURES = {
    f"{PACKAGE}.async_scoped_session.fresh": (
        "(**kw)",
        "AbstractAsyncContextManager[AsyncSession]",
    ),
    f"{PACKAGE}.flask_scoped_session.fresh": ("(**kw)", "AbstractContextManager[Session]"),
}


def _fix_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str] | None:
    """Replace the signatures in ``FIXED_SIGNATURES``; leave the others as they are."""
    return FIXED_SIGNATURES.get(name)


def setup(app: Sphinx) -> None:
    _run_type_checking_blocks()
    app.connect("autodoc-process-signature", _fix_signature)
