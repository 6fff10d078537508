"""Servers in subprocesses (gunicorn, hypercorn) and the load generator (wrk) that drives them.

A server gets a listening socket bound by this process on a free loopback port and handed
over as a file descriptor (``fd://N``), so there is no port race. It runs in its own
session; stopping it sends SIGTERM to the server process, and SIGKILL to its process group
if it has not exited within :data:`STOP_TIMEOUT`.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .measure import BenchError

ROOT = Path(__file__).resolve().parent.parent  # the repository: ``bench`` is imported from it
START_TIMEOUT = 60.0  # seconds for a server's first good answer (2 cores, other servers starting)
STOP_TIMEOUT = 15.0  # seconds for a graceful stop before SIGKILL
GRACEFUL = "5"  # seconds the servers give in-flight requests when told to stop

#: The same sizing for every variant of a server kind.
SERVERS: dict[str, tuple[str, ...]] = {
    "gunicorn": (
        *("-m", "gunicorn", "-w", "2", "--threads", "8", "-k", "gthread"),
        *("--graceful-timeout", GRACEFUL, "--log-level", "warning", "--error-logfile", "-"),
    ),
    "hypercorn": (
        *("-m", "hypercorn", "-w", "2", "--graceful-timeout", GRACEFUL),
        *("--log-level", "warning", "--error-logfile", "-"),
    ),
}
#: How the report names each kind of server, and its sizing.
LABELS = {"gunicorn": "gunicorn gthread", "hypercorn": "hypercorn"}
SIZING = {
    "gunicorn": "gunicorn -w 2 --threads 8 -k gthread",
    "hypercorn": "hypercorn -w 2 (asyncio)",
}
FACTORY = "bench.load_serve:app()"

#: Every RECONNECT-th request asks the server to close the connection; wrk reconnects at once.
RECONNECT = 20
# Without the reconnects, one worker often accepts all 32 connections at wrk's start and keeps
# them, while the other idles: throughput then depends on that first split. Reconnecting
# spreads them over the workers as the run goes. wrk calls done() once at the end; the line
# it prints is what run_wrk() reads.
WRK_SCRIPT = f"""
local count, plain, closing = 0, nil, nil
init = function(args)
  plain = wrk.format()
  closing = wrk.format(nil, nil, {{["Connection"] = "close"}})
end
request = function()
  count = count + 1
  if count % {RECONNECT} == 0 then return closing end
  return plain
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("ASSE_WRK %d %d %.1f %.1f %d %d %d %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class Sample:
    """One wrk run against one variant."""

    rate: float  # requests per second
    p50: float  # seconds
    p99: float  # seconds
    requests: int
    socket_errors: int  # connect, read, write errors and timeouts
    failed: int  # responses whose status was not 2xx or 3xx
    cpu: float | None  # the server's CPU seconds per request (all its processes); None: unknown


@dataclass(frozen=True)
class Server:
    url: str  # the base URL
    process: subprocess.Popen[bytes]
    log: Path  # its output


def log_tail(log: Path, lines: int = 20) -> str:
    """The last *lines* lines of a server's output."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def session_cpu(session: int) -> float | None:
    """User + system CPU seconds of the live processes of *session*, threads included.

    A server runs in its own session (its id is the server's pid), its workers with it. Read
    from ``/proc``; None where there is none. Unlike req/s, this hardly moves when other
    programs compete for the cores.
    """
    if not Path("/proc/self/stat").exists():
        return None
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # After the command's ")": state, ppid, pgrp, session, ..., utime (11), stime (12).
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process has gone
            continue
        if int(fields[3]) == session:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk_missing() -> str:
    """Why wrk cannot be used here, or ``""`` when it can."""
    if shutil.which("wrk") is None:
        return (
            "wrk is not installed (Debian/Ubuntu: 'apt-get install wrk'; 'nox -s bench' installs"
            " it when it runs as root)"
        )
    return ""


def wrk_version() -> str:
    # wrk has no --version; its usage text starts with the version line.
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def run_wrk(server: Server, path: str, seconds: float, connections: int, script: Path) -> Sample:
    """Load *server* for *seconds* with *connections* keep-alive connections (one wrk thread).

    A failed wrk run shows the end of the server's output.
    """
    url = server.url + path
    command = [
        *("wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s"),
        *("--timeout", "10s", "-s", str(script), url),
    ]
    cpu_before = session_cpu(server.process.pid)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    cpu_after = session_cpu(server.process.pid)
    line = next((x for x in done.stdout.splitlines() if x.startswith("ASSE_WRK ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(
            f"wrk failed on {url} ({done.returncode}): {done.stdout}{done.stderr}\n"
            + log_tail(server.log)
        )
    fields = line.split()[1:]
    requests, duration_us = int(fields[0]), int(fields[1])
    p50_us, p99_us = float(fields[2]), float(fields[3])
    connect, read, write, timeout, status = (int(x) for x in fields[4:])
    if not requests:
        raise BenchError(f"{url}: no response in {seconds:g} s:\n{log_tail(server.log)}")
    return Sample(
        requests / (duration_us / 1e6),
        p50_us / 1e6,
        p99_us / 1e6,
        requests,
        connect + read + write + timeout,
        status,
        None if cpu_after is None or cpu_before is None else (cpu_after - cpu_before) / requests,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server; SIGKILL its process group (its workers) if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # its own session: only its workers remain
    process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def serving(kind: str, environ: dict[str, str], log: Path) -> cabc.Iterator[Server]:
    """Start a *kind* server on :data:`FACTORY` with *environ* added; stop it on exit.

    The server's output goes to *log*; it is shown when the server fails to start. It may not
    answer yet: :func:`wait_ready`.
    """
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, **environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, *SERVERS[kind], "--bind", f"fd://{fd}", FACTORY]
    with listener, log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Server(f"http://127.0.0.1:{port}", process, log)
    finally:
        _stop(process)
    if process.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
        print(f"  note: {kind} exited with {process.returncode}: {log_tail(log)}", flush=True)


def wait_ready(server: Server, path: str, client: httpx.Client) -> None:
    """Wait until *server* answers *path* with 200 (a worker has built its app)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if client.get(server.url + path).status_code == 200:
                return
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise BenchError(
                f"{server.url} did not answer (exit code {server.process.returncode}):"
                f"\n{log_tail(server.log)}"
            )
        time.sleep(0.2)
