"""The server subprocess seen from the parent: start it, wait for it, stop it, read its output.

:class:`ServerProcess` runs ``python -m stress --serve ...`` (see :mod:`stress.server`) on a
listening socket the parent bound, with its output going to a log file;
:func:`scan_server_output` counts the lines of that log that reveal a problem.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import httpx

from .plan import StressConfig, StressError

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0  # seconds for the server to answer /stats
TERMINATE_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL
KILL_TIMEOUT = 5.0


class ServerProcess:
    """The server subprocess, serving on *listener* with its output going to *log*."""

    def __init__(
        self,
        config: StressConfig,
        application_name: str,
        table: str,
        listener: socket.socket,
        log: t.IO[bytes],
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "stress",
            "--serve",
            "--fd",
            str(listener.fileno()),
            "--url",
            config.url,
            "--app-name",
            application_name,
            "--table",
            table,
            "--pool-size",
            str(config.pool_size),
            "--max-overflow",
            str(config.max_overflow),
        ]
        self.log = log
        self.proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=[listener.fileno()],
        )

    async def wait_ready(self, client: httpx.AsyncClient) -> None:
        """Wait until the server answers ``/stats`` (at most ``STARTUP_TIMEOUT``)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise StressError(
                    f"the server exited with status {self.proc.returncode} at startup\n"
                    f"{self.log_tail()}"
                )
            try:
                await client.get("/stats", timeout=1.0)
                return
            except httpx.HTTPError as error:
                if time.monotonic() >= deadline:
                    raise StressError(
                        f"the server did not answer within {STARTUP_TIMEOUT:.0f} s: {error!r}\n"
                        f"{self.log_tail()}"
                    ) from error
            await asyncio.sleep(0.1)

    def stop(self) -> dict[str, t.Any]:
        """Stop the server: SIGTERM (graceful: after_serving runs), then SIGKILL after a bound."""
        proc = self.proc
        if proc.poll() is not None:
            return {"how": "exited by itself", "returncode": proc.returncode, "seconds": 0.0}
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(TERMINATE_TIMEOUT)
            how = "terminated"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(KILL_TIMEOUT)
            how = "killed"
        return {"how": how, "returncode": proc.returncode, "seconds": time.monotonic() - start}

    def log_tail(self) -> str:
        """The last lines of the server's output so far, to show with an error."""
        self.log.flush()
        try:
            text = Path(self.log.name).read_text(encoding="utf-8", errors="replace")
        except (OSError, TypeError):
            return ""
        return "server output (last lines):\n" + "\n".join(text.splitlines()[-30:])


# Lines of the server's output, by what they reveal; see scan_server_output.
STDERR_PROBLEMS: dict[str, re.Pattern[str]] = {
    "non-checked-in connection": re.compile(r"non-checked-in connection"),
    "SAWarning": re.compile(r"\bSAWarning\b"),
    "other warnings": re.compile(r"\b(?!SAWarning\b)\w*Warning: "),
    "tracebacks": re.compile(r"^Traceback \(most recent call last\)"),
    "error log lines": re.compile(r"^(ERROR|CRITICAL) |\[(ERROR|CRITICAL)\]"),
    "warning log lines": re.compile(r"^WARNING |\[WARNING\]"),
    "exception ignored": re.compile(r"^Exception ignored"),
    "task destroyed": re.compile(r"Task was destroyed but it is pending"),
    "never retrieved": re.compile(r"exception was never retrieved"),
}


# asyncpg (0.32) with sslmode=prefer, its default: cancelling a connect while its SSL probe
# is under way leaves a future whose ConnectionError nobody retrieves, so asyncio logs it.
# Nothing leaks; it is reported apart (see stress/README.md), not counted as a problem.
KNOWN_ASYNCPG_BLOCK = "unexpected connection_lost() call"


def scan_server_output(output: str) -> dict[str, t.Any]:
    """Count the server's output lines that reveal a problem, with the first few of them."""
    counts = dict.fromkeys(STDERR_PROBLEMS, 0)
    samples: list[str] = []
    known = 0
    lines = output.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if "Future exception was never retrieved" in line and KNOWN_ASYNCPG_BLOCK in following:
            # The block ends with the exception's own line (after a traceback, if any).
            end = index + 1
            while end + 1 < len(lines) and end - index < 60:
                end += 1
                if lines[end].startswith("ConnectionError: " + KNOWN_ASYNCPG_BLOCK):
                    break
            known += 1
            index = end + 1
            continue
        hit = False
        for name, pattern in STDERR_PROBLEMS.items():
            if pattern.search(line):
                counts[name] += 1
                hit = True
        if hit and len(samples) < 10:
            samples.append(line[:300])
        index += 1
    return {
        "lines": len(lines),
        "problems": counts,
        "samples": samples,
        "known_asyncpg_cancelled_connect": known,
    }
