"""Run the three todo examples behind real HTTP servers on 127.0.0.1, with SQLite files.

    python examples/demo.py            # scripted requests to Quart, Flask, Flask async; exits 0
    python examples/demo.py --serve    # serve the Quart app on http://127.0.0.1:5000

The scripted run serves the Quart app with hypercorn, and the sync Flask app and the Flask
app with async views each with a threaded werkzeug server, all on free ports. It sends the
same requests to the three with httpx (add three todos, mark one done, delete one, list
them), prints every exchange, and checks the final list. The SQLite files live in a
temporary directory that is removed at the end; with ``--serve`` the ``TODO_DATABASE_URL``
environment variable can name another database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import typing as t
from http import HTTPStatus
from pathlib import Path

# Run as a script (``python examples/demo.py``), Python puts examples/ on sys.path; the
# examples are imported as the ``examples`` package, from the repository root.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from flask import Flask  # noqa: E402
from hypercorn.asyncio import serve  # noqa: E402
from hypercorn.config import Config  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from examples.flask_async_todo.app import create_app as create_flask_async_app  # noqa: E402
from examples.flask_async_todo.app import dispose_engine  # noqa: E402
from examples.flask_todo.app import create_app as create_flask_app  # noqa: E402
from examples.flask_todo.app import engine_of  # noqa: E402
from examples.quart_todo.app import create_app as create_quart_app  # noqa: E402

HOST = "127.0.0.1"
REQUEST_TIMEOUT = 5.0  # seconds, for every request
APP_TIMEOUT = 15.0  # seconds, for one app's whole scripted run
TITLES = ("Buy milk", "Write the README", "Release 0.1.0")
EXPECTED_FINAL_LIST = [
    {"id": 1, "title": "Buy milk", "done": True},
    {"id": 3, "title": "Release 0.1.0", "done": False},
]


async def run_script(client: httpx.AsyncClient) -> list[dict[str, t.Any]]:
    """Add three todos, mark the first done, delete the second; return the final list."""
    ids = []
    for title in TITLES:
        created = await send(client, "POST", "/todos", {"title": title}, expect=201)
        ids.append(created["id"])
    await send(client, "POST", f"/todos/{ids[0]}/done", expect=200)
    await send(client, "DELETE", f"/todos/{ids[1]}", expect=204)
    final: list[dict[str, t.Any]] = await send(client, "GET", "/todos", expect=200)
    return final


async def send(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, str] | None = None,
    *,
    expect: int,
) -> t.Any:
    """Send one request, print it and its response, and return the decoded JSON body."""
    print(f"  > {method} {path}" + (f" {json.dumps(body)}" if body is not None else ""))
    response = await client.request(method, path, json=body)
    data = response.json() if response.content else None
    shown = f" {json.dumps(data)}" if data is not None else ""
    print(f"  < {response.status_code} {HTTPStatus(response.status_code).phrase}{shown}")
    if response.status_code != expect:
        raise RuntimeError(f"{method} {path} answered {response.status_code}, not {expect}")
    return data


def report(name: str, final: list[dict[str, t.Any]]) -> None:
    """Print the final list as a checklist and fail unless it is the expected one."""
    print(f"{name} final list:")
    for todo in final:
        print(f"  [{'x' if todo['done'] else ' '}] {todo['id']}: {todo['title']}")
    if final != EXPECTED_FINAL_LIST:
        raise RuntimeError(f"{name}: expected {EXPECTED_FINAL_LIST}, got {final}")


def listening_socket() -> socket.socket:
    """A TCP socket listening on a free port of 127.0.0.1.

    It listens before the server starts, so requests sent early wait in the backlog instead
    of being refused.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    sock.listen()
    return sock


async def demo_quart(directory: Path) -> None:
    """Serve the Quart example with hypercorn and run the script against it."""
    app = create_quart_app(f"sqlite+aiosqlite:///{directory / 'quart_todo.db'}")
    sock = listening_socket()
    base_url = "http://{}:{}".format(*sock.getsockname())
    config = Config()
    config.loglevel = "WARNING"  # the demo prints the URL itself
    # hypercorn adopts the socket from its file descriptor and closes it at shutdown.
    config.bind = [f"fd://{sock.detach()}"]
    print(f"== Quart todo app, hypercorn on {base_url}, SQLite through aiosqlite ==")
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    try:
        async with asyncio.timeout(APP_TIMEOUT):
            async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
                final = await run_script(client)
    finally:
        stop.set()
        await asyncio.wait_for(server, APP_TIMEOUT)  # after_serving disposes the engine
    report("Quart", final)


async def script_on_werkzeug(app: Flask, name: str, database: str) -> list[dict[str, t.Any]]:
    """Serve *app* with a threaded werkzeug server on a free port and run the script."""
    server = make_server(HOST, 0, app, threaded=True)
    base_url = f"http://{HOST}:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    print(f"\n== {name}, threaded werkzeug server on {base_url}, {database} ==")
    thread.start()
    try:
        async with asyncio.timeout(APP_TIMEOUT):
            async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
                return await run_script(client)
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join(APP_TIMEOUT)


async def demo_flask(directory: Path) -> None:
    """Serve the sync Flask example with a threaded werkzeug server and run the script."""
    app = create_flask_app(f"sqlite:///{directory / 'flask_todo.db'}")
    try:
        final = await script_on_werkzeug(app, "Flask todo app", "SQLite")
    finally:
        engine_of(app).dispose()
    report("Flask", final)


async def demo_flask_async(directory: Path) -> None:
    """Serve the Flask async-views example with a threaded werkzeug server and run the script.

    Its views run on the library's shared event loop, in a thread of its own. create_app and
    dispose_engine wait for that loop (``run()``), which is refused in a thread whose own
    loop is running, like this one: they go to a worker thread.
    """
    url = f"sqlite+aiosqlite:///{directory / 'flask_async_todo.db'}"
    app = await asyncio.to_thread(create_flask_async_app, url)
    try:
        final = await script_on_werkzeug(
            app, "Flask todo app with async views", "SQLite through aiosqlite"
        )
    finally:
        await asyncio.to_thread(dispose_engine, app)
    report("Flask async", final)


async def demo() -> None:
    """The scripted run: the three apps, one after the other, in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="asse-demo-") as directory:
        await demo_quart(Path(directory))
        await demo_flask(Path(directory))
        await demo_flask_async(Path(directory))
    print("\nAll three apps gave the expected list; servers stopped.")


async def serve_quart() -> None:
    """Serve the Quart example on 127.0.0.1:5000 until Ctrl-C (or SIGTERM)."""
    with tempfile.TemporaryDirectory(prefix="asse-demo-") as directory:
        url = os.environ.get("TODO_DATABASE_URL") or (
            f"sqlite+aiosqlite:///{Path(directory) / 'quart_todo.db'}"
        )
        app = create_quart_app(url)
        config = Config()
        config.bind = [f"{HOST}:5000"]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C still works
                pass
        print(f"Serving the Quart todo app on http://{HOST}:5000 with {url}; Ctrl-C stops.")
        print(
            "Try: curl -H 'Content-Type: application/json' -d '{\"title\": \"Buy milk\"}'"
            f" http://{HOST}:5000/todos"
        )
        await serve(app, config, shutdown_trigger=stop.wait)
    print("Stopped.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--serve", action="store_true", help="serve the Quart app on 127.0.0.1:5000 until Ctrl-C"
    )
    args = parser.parse_args()
    # The demo prints each exchange itself; keep the servers' per-request logs quiet.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        asyncio.run(serve_quart() if args.serve else demo())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
