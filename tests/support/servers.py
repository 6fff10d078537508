"""Real servers on loopback for the tests: threaded werkzeug for Flask, hypercorn for Quart."""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import contextlib
import os
import socket
import threading
import typing as t

from flask import Flask
from hypercorn.asyncio import serve
from hypercorn.config import Config
from werkzeug.serving import make_server

if t.TYPE_CHECKING:  # Flask 2.3's compat cell has no Quart
    from quart import Quart

SERVER_TIMEOUT = 10.0  # seconds a server may take to stop


@contextlib.contextmanager
def serving_wsgi(app: Flask) -> cabc.Iterator[str]:
    """Serve *app* on a threaded werkzeug server on a free loopback port; yield its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(SERVER_TIMEOUT)
        server.server_close()
        assert not thread.is_alive(), "the werkzeug server did not stop"


@contextlib.asynccontextmanager
async def serving_asgi(app: Quart) -> cabc.AsyncIterator[str]:
    """Serve *app* with hypercorn as a task on this loop, on a free loopback port.

    The listening socket is bound (and listening) before hypercorn starts, and handed to it as
    a duplicated file descriptor: no port race, and clients that connect before hypercorn
    accepts simply wait in the backlog.
    """
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    try:
        port = listener.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{os.dup(listener.fileno())}"]
        config.graceful_timeout = 5.0
        config.accesslog = None
        shutdown = asyncio.Event()
        server = asyncio.create_task(serve(app, config, shutdown_trigger=shutdown.wait))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            shutdown.set()
            await asyncio.wait_for(server, SERVER_TIMEOUT)
    finally:
        listener.close()
