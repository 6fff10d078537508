"""How requests reach an app: called in-process (WSGI, ASGI) or sent over loopback HTTP."""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import contextlib
import os
import socket
import threading
import time
import typing as t

import httpx
from flask import Flask
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart
from sqlalchemy.ext.asyncio import AsyncEngine
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder

from .measure import BenchError, Call, Check, Hit, timed_calls

TIMEOUT = 10.0  # seconds: one HTTP request, a server start or stop


# --- in-process -------------------------------------------------------------------------


def wsgi_call(app: Flask, path: str) -> Call:
    """Call the WSGI app directly, as a server would, without a socket or a test client."""
    environ = EnvironBuilder(path=path, base_url="http://127.0.0.1").get_environ()
    status: list[int] = []

    def start_response(line: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
        status.append(int(line.split(" ", 1)[0]))

    def call() -> tuple[int, bytes]:
        status.clear()
        chunks = app.wsgi_app(dict(environ), start_response)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return status[0], body

    return call


def _scope(path: str) -> dict[str, t.Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "extensions": {},
    }


async def asgi_call(app: Quart, scope: dict[str, t.Any]) -> tuple[int, bytes]:
    """One request through the ASGI app, as a server would send it (a GET without a body)."""
    sent_body = False
    status = 0
    body: list[bytes] = []
    never = asyncio.Event()

    async def receive() -> dict[str, t.Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await never.wait()  # the client never goes away; Quart cancels this when done
        return {"type": "http.disconnect"}

    async def send(message: dict[str, t.Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(t.cast(t.Any, scope), t.cast(t.Any, receive), t.cast(t.Any, send))
    return status, b"".join(body)


def asgi_hit(runner: asyncio.Runner, app: Quart, path: str, check: Check, label: str) -> Hit:
    """A :data:`Hit` that awaits the app's requests on *runner*'s loop (timed on that loop)."""
    scope = _scope(path)

    async def batch(count: int) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            status, body = await asgi_call(app, dict(scope))
            if status != 200:
                raise BenchError(f"{label}: status {status}: {body[:300]!r}")
            check(body)
        return time.perf_counter() - start, time.process_time() - cpu

    return lambda count: runner.run(batch(count))


# --- over the wire ------------------------------------------------------------------------


def http_hit(client: httpx.Client, url: str, check: Check, label: str) -> Hit:
    """A :data:`Hit` that sends sequential GETs to *url* with *client*."""

    def call() -> tuple[int, bytes]:
        response = client.get(url)
        return response.status_code, response.content

    return timed_calls(call, check, label)


def http_client() -> httpx.Client:
    """One keep-alive client for loopback, without proxies from the environment."""
    return httpx.Client(timeout=TIMEOUT, trust_env=False)


@contextlib.contextmanager
def serving_wsgi(app: Flask) -> cabc.Iterator[str]:
    """Serve *app* on a threaded werkzeug server on a free loopback port; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.2},
        name=f"werkzeug-{app.name}",
        daemon=True,
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()


@contextlib.contextmanager
def serving_asgi(app: Quart, engines: cabc.Sequence[AsyncEngine]) -> cabc.Iterator[str]:
    """Serve *app* with hypercorn on its own loop in a thread; dispose *engines* there after.

    The listening socket is bound before hypercorn starts and handed over as a file
    descriptor, so there is no port race.
    """
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{os.dup(listener.fileno())}"]
    config.graceful_timeout = 5.0
    config.accesslog = None
    config.loglevel = "WARNING"  # no "Running on ..." line per server
    started = threading.Event()
    loop_box: list[asyncio.AbstractEventLoop] = []
    stop_box: list[asyncio.Event] = []
    errors: list[BaseException] = []

    async def main() -> None:
        stop = asyncio.Event()
        loop_box.append(asyncio.get_running_loop())
        stop_box.append(stop)
        started.set()
        try:
            await serve(app, config, shutdown_trigger=stop.wait)
        finally:
            for engine in engines:
                await engine.dispose()

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as error:  # reported by the main thread
            errors.append(error)
            started.set()

    thread = threading.Thread(target=target, name=f"hypercorn-{app.name}", daemon=True)
    thread.start()
    try:
        if not started.wait(TIMEOUT) or errors:
            raise BenchError(f"hypercorn did not start for {app.name}: {errors!r}")
        yield f"http://127.0.0.1:{port}"
    finally:
        if loop_box:
            loop_box[0].call_soon_threadsafe(stop_box[0].set)
        thread.join(TIMEOUT)
        listener.close()
        if errors:
            raise BenchError(f"hypercorn failed for {app.name}: {errors[0]!r}") from errors[0]
