"""A fault-injecting TCP proxy for tests: delay, stall, cut or refuse a server's traffic.

``FaultProxy`` listens on 127.0.0.1 on a free port and forwards every connection to a target
(the test PostgreSQL server). It runs its own event loop in a daemon thread, so it serves
Quart tests, Flask's shared loop and plain sync code alike, and its controls may be called
from any thread (they wait until the proxy's loop has applied them)::

    with FaultProxy("127.0.0.1", 5432) as proxy:
        url = url.set(host=proxy.host, port=proxy.port)
        proxy.delay(0.5, "to_client")  # every server reply arrives 0.5 s late
        proxy.stall()                  # nothing moves, nothing is closed (a partition)
        proxy.resume()                 # held data is forwarded
        proxy.cut()                    # every open connection is reset (RST)
        proxy.refuse(True)             # new connections are accepted and reset at once
        proxy.hold_close(1.0)          # a server's close reaches the client 1 s after its data

Memory is bounded: each direction of a connection holds at most one chunk of 64 KiB while it
is delayed or stalled, plus what its stream reader buffers before it stops reading (about
twice that); beyond that, TCP flow control pushes back on the sender.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import concurrent.futures
import contextlib
import socket
import struct
import threading
import typing as t

import pytest
from sqlalchemy import make_url

from .databases import postgres_url, require_postgres

if t.TYPE_CHECKING:
    from types import TracebackType

_T = t.TypeVar("_T")

Direction = t.Literal["both", "to_server", "to_client"]

CHUNK = 64 * 1024
CONTROL_TIMEOUT = 5.0  # seconds a control call waits for the proxy's loop
_RESET_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close *writer*'s socket at once with an RST, dropping anything unsent."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_LINGER)
    writer.transport.abort()


class _Link:
    """One proxied connection: the client side, the server side and the task joining them."""

    __slots__ = ("client", "server", "task")

    def __init__(self, client: asyncio.StreamWriter, task: asyncio.Task[t.Any] | None) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.task = task

    def reset(self, *, cancel: bool = True) -> None:
        """Reset both sides; with *cancel*, also end the task (never from inside it)."""
        _reset(self.client)
        _reset(self.server)
        if cancel and self.task is not None:
            self.task.cancel()


class FaultProxy:
    """A TCP proxy from 127.0.0.1:<free port> to ``target_host:target_port`` with faults.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`). Counters are
    plain attributes read without locking: ``accepted`` (connections accepted so far,
    refused ones included), ``refused`` (of those, reset at once) and ``open`` (currently
    proxied).
    """

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int, *, connect_timeout: float = 5.0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.connect_timeout = connect_timeout
        self.accepted = 0
        self.refused = 0
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._delays: dict[str, float] = {"to_server": 0.0, "to_client": 0.0}
        self._refusing = False
        self._close_hold = 0.0
        self._flowing: asyncio.Event | None = None  # created on the proxy's loop

    # --- lifecycle -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("the FaultProxy is not started")
        return self._port

    @property
    def open(self) -> int:
        """How many connections are being proxied right now."""
        return len(self._links)

    def start(self) -> FaultProxy:
        """Bind the port, start the loop thread and begin accepting; return ``self``."""
        if self._loop is not None:
            raise RuntimeError("the FaultProxy is already started")
        listener = socket.create_server((self.host, 0), backlog=128)
        self._port = listener.getsockname()[1]
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name=f"FaultProxy:{self._port}", daemon=True
        )
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(listener), loop).result(CONTROL_TIMEOUT)
        except BaseException:
            listener.close()
            self.stop()
            raise
        return self

    async def _listen(self, listener: socket.socket) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, sock=listener, limit=CHUNK)

    def stop(self) -> None:
        """Stop listening, reset every connection, and end the loop thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive():
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(CONTROL_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CONTROL_TIMEOUT)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [link.task for link in self._links if link.task is not None]
        for link in list(self._links):
            link.reset()
        if tasks:
            await asyncio.wait(tasks, timeout=CONTROL_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- controls (any thread) -------------------------------------------------------

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Hold every chunk going *direction* for *seconds* before forwarding it (0: none).

        Chunks are delayed one after the other, so for a request/response protocol such as
        PostgreSQL's every round trip takes at least *seconds* longer.
        """
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        keys = ("to_server", "to_client") if direction == "both" else (direction,)
        self._control(lambda: self._delays.update(dict.fromkeys(keys, seconds)))

    def stall(self) -> None:
        """Stop forwarding in both directions without closing anything, until :meth:`resume`.

        Like a network partition: neither data nor a peer's close gets through.
        """
        self._control(lambda: self._require_flowing().clear())

    def resume(self) -> None:
        """Forward again, first the data held while stalled."""
        self._control(lambda: self._require_flowing().set())

    def cut(self) -> int:
        """Reset (RST) both sides of every open connection; return how many were cut."""

        def cut_all() -> int:
            links = list(self._links)
            for link in links:
                link.reset()
            return len(links)

        return self._control(cut_all)

    def refuse(self, refusing: bool = True) -> None:
        """While *refusing*, accept new connections and reset them at once (a down server)."""
        self._control(lambda: setattr(self, "_refusing", refusing))

    def hold_close(self, seconds: float) -> None:
        """Forward a server's last data at once, but its close only *seconds* later (0: none).

        Stretches the instant between a backend's last message (``FATAL: terminating
        connection``) and the end of its connection, which a client otherwise sees within
        microseconds: the client has read the message and its connection is still open.
        """
        if seconds < 0:
            raise ValueError("a hold cannot be negative")
        self._control(lambda: setattr(self, "_close_hold", seconds))

    def _require_flowing(self) -> asyncio.Event:
        if self._flowing is None:
            raise RuntimeError("the FaultProxy is not started")
        return self._flowing

    def _control(self, apply: t.Callable[[], _T]) -> _T:
        """Run *apply* on the proxy's loop and wait for it, so it holds once this returns."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            raise RuntimeError("the FaultProxy is not started")
        if threading.current_thread() is thread:
            return apply()
        done: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(apply())
            except BaseException as error:  # handed to the caller
                done.set_exception(error)

        loop.call_soon_threadsafe(run)
        return done.result(CONTROL_TIMEOUT)

    # --- forwarding (the proxy's loop) -----------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            self.refused += 1
            _reset(writer)
            return
        link = _Link(writer, asyncio.current_task())
        self._links.add(link)
        try:
            async with asyncio.timeout(self.connect_timeout):
                server_reader, link.server = await asyncio.open_connection(
                    self.target_host, self.target_port, limit=CHUNK
                )
            pumps = [
                asyncio.ensure_future(self._pump(reader, link.server, "to_server")),
                asyncio.ensure_future(self._pump(server_reader, writer, "to_client")),
            ]
            try:
                # Either side ending (EOF, reset, error) ends the connection.
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                if pumps[1] in done and self._close_hold > 0:  # the server ended it
                    await asyncio.sleep(self._close_hold)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            writer.close()
            link.server.close()
        except (OSError, TimeoutError):
            link.reset(cancel=False)
        except asyncio.CancelledError:
            # cut() or stop(): the task is this connection's own and ends here; a cancelled
            # task would make asyncio's stream callback log the cancellation as an error.
            link.reset(cancel=False)
        finally:
            self._links.discard(link)
            if not writer.transport.is_closing():
                link.reset(cancel=False)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        """Forward *reader* to *writer* until EOF or an error; a stall holds EOFs too."""
        flowing = self._require_flowing()
        while True:
            try:
                data = await reader.read(CHUNK)
            except OSError:
                data = b""  # reset by the peer: ends the connection like an EOF
            delay = self._delays[direction]
            if data and delay > 0:
                await asyncio.sleep(delay)
            await flowing.wait()
            if not data:
                return
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                return


@pytest.fixture
def proxy() -> cabc.Iterator[FaultProxy]:
    """A fault proxy in front of the test database's server (a fixture)."""
    require_postgres()
    target = make_url(postgres_url("asyncpg"))
    with FaultProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        yield proxy
