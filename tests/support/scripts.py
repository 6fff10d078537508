"""Scripts run in a new interpreter: at-exit and fork behaviour, away from the test process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import typing as t
from pathlib import Path

from .environment import child_environ

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60


def run_script(script: str, *args: str, warnings: t.Sequence[str] = ("error",)) -> str:
    """Run *script* in a new interpreter from the repository root; return its stdout.

    Fails unless it exits with 0 and writes nothing to stderr (with warnings as errors, that
    includes every ResourceWarning about a connection that was never closed).
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=child_environ(*warnings),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return result.stdout
