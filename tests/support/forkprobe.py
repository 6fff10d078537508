"""For the fork tests' child interpreters: fork a worker, run a probe in it, read its answer.

Imported by the scripts those tests run (``from tests.support.forkprobe import in_forked_child``),
from the repository root.
"""

from __future__ import annotations

import json
import os
import signal
import time
import typing as t
import warnings


def in_forked_child(
    probe: t.Callable[[], object], *, default: object = None, timeout: float = 20.0
) -> tuple[object, int]:
    """Fork; run *probe* in the child and return its JSON answer and the child's exit code.

    A child that does not end within *timeout* seconds is killed; one that answered nothing
    gives *default*.
    """
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads
        child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(probe()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    while (waited := os.waitpid(child, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if waited[0] == 0:
        os.kill(child, signal.SIGKILL)
        waited = os.waitpid(child, 0)
    answer = os.read(read_end, 65536).decode()
    os.close(read_end)
    return (json.loads(answer) if answer else default), os.waitstatus_to_exitcode(waited[1])
