"""One run, driven from the parent: start the server, load it, watch it, let it settle, stop it.

:class:`StressRun` puts the pieces together: :class:`~stress.process.ServerProcess` (the
subprocess), :class:`Load` (the planned requests and their faults, *concurrency* at a time),
:class:`Sampler` (the server's ``/stats`` and the app's backends over the run) and
:class:`~stress.database.Database` (PostgreSQL seen from here). What they measure goes to
:func:`stress.report.judge`.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import contextlib
import json
import socket
import struct
import tempfile
import time
import typing as t
import uuid
from pathlib import Path

import httpx
from sqlalchemy.exc import SQLAlchemyError

from .database import STATS_TIMEOUT, Database
from .plan import (
    BAD_BODY,
    CLIENT_TIMEOUT,
    CONNECTION_ERROR,
    DEADLINE,
    DISCONNECT,
    DISCONNECTED,
    EXPECTED,
    HOST,
    OK_200,
    REQUEST_TIMEOUT,
    TIMEOUT,
    Outcome,
    Planned,
    StressConfig,
    StressError,
    plan,
)
from .process import ServerProcess, scan_server_output
from .report import Measurements, StressReport, judge

_T = t.TypeVar("_T")

# The client drops idle keep-alive connections well before the server closes them: with
# httpx's default (5 s, hypercorn's too: server.SERVER_KEEP_ALIVE) a request now and then goes
# out on a connection the server is closing, and fails with "Server disconnected without
# sending a response".
CLIENT_KEEP_ALIVE = 2.0
# What a look at the server or at PostgreSQL may fail with while the run goes on.
LOOK_UP_ERRORS = (httpx.HTTPError, SQLAlchemyError, OSError, TimeoutError)


class Load:
    """The planned requests, sent *concurrency* at a time to the server on *port*."""

    def __init__(self, config: StressConfig, planned: list[Planned], port: int) -> None:
        self.config = config
        self.planned = planned
        self.port = port
        self.outcomes: dict[int, Outcome] = {}
        self.warm_at = max(1, config.requests // 10)
        self.warmed = asyncio.Event()  # set once the first tenth of the requests are done

    async def run(self, client: httpx.AsyncClient) -> tuple[float, bool]:
        """Send every planned request, *concurrency* at a time; (seconds, deadline hit)."""
        items = iter(self.planned)

        async def worker() -> None:
            for item in items:
                await self.send(client, item)

        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            async with asyncio.timeout_at(loop.time() + self.config.max_seconds):
                await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))
        except TimeoutError:
            return time.perf_counter() - start, True
        return time.perf_counter() - start, False

    async def send(self, client: httpx.AsyncClient, item: Planned) -> None:
        """Send *item* the way its kind asks for, and record its outcome."""
        start = time.perf_counter()
        try:
            if item.kind == DISCONNECT:
                result, detail = await self.send_and_hang_up(item)
            else:
                result, detail = await self.send_http(client, item)
        except asyncio.CancelledError:
            self.record(item, DEADLINE, start)
            raise
        self.record(item, result, start, detail)

    def record(self, item: Planned, result: str, start: float, detail: str = "") -> None:
        """Keep *item*'s outcome; the warm-up ends with the ``warm_at``-th one."""
        expected = result in EXPECTED[item.kind]
        seconds = time.perf_counter() - start
        self.outcomes[item.n] = Outcome(item.n, item.kind, result, expected, seconds, detail)
        if len(self.outcomes) == self.warm_at:
            self.warmed.set()

    async def send_http(self, client: httpx.AsyncClient, item: Planned) -> tuple[str, str]:
        """Send *item* with httpx; its result and a detail, checking a 200's body."""
        params = {
            "n": str(item.n),
            "sleep": f"{item.sleep:.3f}",
            "commit": "1" if item.commit else "0",
            "fault": item.fault,
        }
        timeout = item.client_timeout or self.config.request_timeout
        try:
            response = await client.get("/work", params=params, timeout=timeout)
        except httpx.TimeoutException as error:
            result = CLIENT_TIMEOUT if item.kind == TIMEOUT else REQUEST_TIMEOUT
            return result, type(error).__name__
        except httpx.TransportError as error:
            return CONNECTION_ERROR, f"{type(error).__name__}: {error}"
        if response.status_code != 200:
            return str(response.status_code), response.text[:200]
        try:
            body = response.json()
        except ValueError:
            return BAD_BODY, response.text[:200]
        wanted = {"n": item.n, "payload": f"request {item.n}", "same": True}
        if {key: body.get(key) for key in wanted} != wanted or body.get("committed") != (
            item.commit
        ):
            return BAD_BODY, json.dumps(body)[:200]
        return OK_200, ""

    async def send_and_hang_up(self, item: Planned) -> tuple[str, str]:
        """Send the request on a raw socket and close it mid-query (FIN or reset)."""
        path = f"/work?n={item.n}&sleep={item.sleep:.3f}&commit=0&fault="
        head = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nConnection: close\r\n\r\n"
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.port), self.config.request_timeout
            )
        except (OSError, TimeoutError) as error:
            return CONNECTION_ERROR, f"{type(error).__name__}: {error}"
        try:
            writer.write(head.encode("ascii"))
            await writer.drain()
            await asyncio.sleep(item.close_after)
        except OSError as error:
            return CONNECTION_ERROR, f"{type(error).__name__}: {error}"
        finally:
            if item.reset:
                sock = writer.get_extra_info("socket")
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return DISCONNECTED, "reset" if item.reset else "fin"


class Sampler:
    """The server's ``/stats`` and the app's backends: during the load, after it, settled."""

    def __init__(self, config: StressConfig, client: httpx.AsyncClient, database: Database) -> None:
        self.config = config
        self.client = client
        self.database = database
        self.samples: list[dict[str, t.Any]] = []
        self.errors: list[str] = []
        self.warm: dict[str, t.Any] | None = None
        self.warm_trimmed: dict[str, t.Any] | None = None

    async def stats(self, *, collect: bool = False, trim: bool = False) -> dict[str, t.Any]:
        """The server's /stats: after gc.collect() with *collect*, malloc_trim with *trim*."""
        params = {"gc": "1" if collect else "0", "trim": "1" if trim else "0"}
        response = await self.client.get("/stats", params=params)
        response.raise_for_status()
        return t.cast(dict[str, t.Any], response.json())

    async def sample(self, stop: asyncio.Event) -> None:
        """Every ``sample_interval`` s until *stop*: the server's /stats and its backends."""
        start = time.perf_counter()
        while not stop.is_set():
            try:
                stats = await self.stats()
                states = await self.database.backend_states()
                self.samples.append(
                    {
                        "t": round(time.perf_counter() - start, 2),
                        "rss_kb": stats["rss_kb"],
                        "registry": stats["registry"],
                        "checked_out": stats["checked_out"],
                        "backends": sum(states.values()),
                    }
                )
            except LOOK_UP_ERRORS as error:
                self.errors.append(repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.sample_interval)

    async def sample_warm(self, load: Load) -> None:
        """Once *load* is warm: /stats after gc.collect(), then after malloc_trim(0) too."""
        await load.warmed.wait()
        try:
            self.warm = await self.stats(collect=True)
            self.warm["after_requests"] = len(load.outcomes)
            self.warm_trimmed = await self.stats(trim=True)
        except httpx.HTTPError as error:
            self.errors.append(f"warm-up sample: {error!r}")

    async def settle(self) -> dict[str, t.Any]:
        """Poll until nothing is held any more (at most ``settle_seconds``); the last look."""
        start = time.monotonic()
        while True:
            stats = await self.stats()
            states = await self.database.backend_states()
            busy = {state: count for state, count in states.items() if state != "idle"}
            clean = (
                stats["registry"] == 0
                and stats["checked_out"] == 0
                and not busy
                and states.get("idle", 0) <= self.config.pool_size
            )
            waited = time.monotonic() - start
            if clean or waited >= self.config.settle_seconds:
                break
            await asyncio.sleep(0.25)
        end = await self.stats(collect=True)
        end_trimmed = await self.stats(trim=True)
        return {
            "settled": clean,
            "seconds": round(waited, 2),
            "registry": stats["registry"],
            "checked_out": stats["checked_out"],
            "backend_states": states,
            "registry_after_gc": end["registry"],
            "end": end,
            "end_trimmed": end_trimmed,
        }


class StressRun:
    """One run: start the server, load it, let it settle, check, stop it."""

    def __init__(self, config: StressConfig) -> None:
        self.config = config
        token = uuid.uuid4().hex[:12]
        self.application_name = f"asse-stress-{token}"
        self.table = f"asse_stress_{token}"
        self.planned = plan(config.requests, config.seed)
        self.database = Database(config.url, self.application_name, self.table)
        self.data: dict[str, t.Any] = {}  # see report.Measurements.data
        self.cleanup_errors: list[str] = []

    async def execute(self) -> StressReport:
        """Carry the run out and judge it; raises :class:`StressError` if it cannot."""
        config = self.config
        started = time.monotonic()
        try:
            await self.database.check()
            with contextlib.ExitStack() as stack:
                if config.server_log is not None:
                    log_path = config.server_log
                else:
                    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="asse-stress-"))
                    log_path = Path(tmp) / "server.log"
                log = stack.enter_context(log_path.open("wb"))
                load, sampler = await self.serve_and_measure(log)
                output = log_path.read_text(encoding="utf-8", errors="replace")
            self.data["server_output"] = scan_server_output(output)
            if config.server_log is not None:
                self.data["server_output"]["path"] = str(config.server_log)
        finally:
            await self.database.dispose()
        self.data["runtime_seconds"] = round(time.monotonic() - started, 2)
        return judge(
            Measurements(
                config=config,
                application_name=self.application_name,
                table=self.table,
                planned=self.planned,
                outcomes=load.outcomes,
                samples=sampler.samples,
                sample_errors=sampler.errors,
                warm=sampler.warm,
                warm_trimmed=sampler.warm_trimmed,
                cleanup_errors=self.cleanup_errors,
                data=self.data,
            )
        )

    async def serve_and_measure(self, log: t.IO[bytes]) -> tuple[Load, Sampler]:
        """Start the server, load it and let it settle while sampling; stop it, clean up."""
        config = self.config
        with socket.create_server((HOST, 0), backlog=1024) as listener:
            port = listener.getsockname()[1]
            server = ServerProcess(config, self.application_name, self.table, listener, log)
        # The server holds the listening socket now; ours is closed.
        base_url = f"http://{HOST}:{port}"
        room = config.concurrency + 8
        load_client = httpx.AsyncClient(
            base_url=base_url,
            timeout=config.request_timeout,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=room,
                max_keepalive_connections=room,
                keepalive_expiry=CLIENT_KEEP_ALIVE,
            ),
        )
        stats_client = httpx.AsyncClient(
            base_url=base_url,
            timeout=STATS_TIMEOUT,
            trust_env=False,
            limits=httpx.Limits(keepalive_expiry=CLIENT_KEEP_ALIVE),
        )
        load = Load(config, self.planned, port)
        sampler = Sampler(config, stats_client, self.database)
        try:
            async with load_client, stats_client:
                await server.wait_ready(stats_client)
                stop = asyncio.Event()
                sampling = asyncio.create_task(sampler.sample(stop))
                warm = asyncio.create_task(sampler.sample_warm(load))
                try:
                    seconds, deadline_hit = await load.run(load_client)
                finally:
                    stop.set()
                    warm.cancel()
                    await asyncio.gather(sampling, warm, return_exceptions=True)
                self.data["load"] = {"seconds": seconds, "deadline_hit": deadline_hit}
                try:
                    self.data["settle"] = await sampler.settle()
                    self.data["rows"] = await self.database.table_rows()
                except LOOK_UP_ERRORS as error:
                    code = server.proc.poll()
                    died = "" if code is None else f" (the server died: {code})"
                    raise StressError(
                        f"the checks after the load failed{died}: {error!r}\n{server.log_tail()}"
                    ) from error
        finally:
            # Each step runs even if an earlier one fails; a failure shows up as None.
            self.data["server_stop"] = await asyncio.to_thread(server.stop)
            self.data["backends_after_shutdown"] = await self.cleanup_step(
                self.database.backends_after_shutdown()
            )
            self.data["table_left_by_server"] = await self.cleanup_step(
                self.database.drop_table_if_left()
            )
        return load, sampler

    async def cleanup_step(self, step: cabc.Awaitable[_T]) -> _T | None:
        """*step*'s result, or ``None`` after keeping its error among the cleanup failures."""
        try:
            return await step
        except (SQLAlchemyError, OSError, TimeoutError) as error:
            self.cleanup_errors.append(repr(error))
            return None


async def run_stress(config: StressConfig) -> StressReport:
    """Run the stress test described by *config*; raises :class:`StressError` if it cannot."""
    return await StressRun(config).execute()
