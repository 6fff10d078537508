"""docs/deployment.md, run: each recipe against a real server and a fresh PostgreSQL database.

A recipe is the one-off command that creates the tables, then the server with two workers,
then SIGTERM. Each test checks that the workers start on the empty database, serve
concurrent requests without an error, and once stopped have closed every pool connection
they opened, leaving no backend of the app in ``pg_stat_activity``. The helpers are in
``tests/support/deployment.py``; the apps are the page's (``tests/support/deploy_*.py``).
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import httpx
import pytest

from .support.deployment import (
    APPS,
    ONE_OFF,
    RECIPES,
    Deployment,
    backends,
    backends_once_gone,
    fresh_database,
    send_all,
)
from .support.environment import needs_quart
from .support.scripts import REPO_ROOT

REQUESTS = 24  # concurrent writes, and as many concurrent slow reads
MAX_ROUNDS = 20  # rounds of requests to find every worker


def find_workers(deployment: Deployment) -> set[int]:
    """Send rounds of overlapping slow requests until every worker has answered one."""
    seen: set[int] = set()
    rounds = 0
    while len(seen) < deployment.workers and rounds < MAX_ROUNDS:
        rounds += 1
        responses = asyncio.run(
            send_all(deployment.base_url, [("GET", "/probe/work?sleep=0.05", None)] * 8)
        )
        seen.update(int(response.headers["X-Worker-Pid"]) for response in responses)
    return seen


def check_stopped_cleanly(deployment: Deployment, workers: set[int]) -> None:
    """Exit code 0, no traceback, and every connection any process opened closed by its pool."""
    assert deployment.server is not None
    assert deployment.server.returncode == 0, deployment.log
    assert "Traceback" not in deployment.log, deployment.log
    connections = deployment.connections_by_process()
    assert workers <= set(connections), f"a worker opened no connection: {connections}"
    unclosed = {pid: c for pid, c in connections.items() if c["connect"] != c["close"]}
    assert unclosed == {}, f"connections left to the OS at exit: {unclosed}\n{deployment.log}"


DEPLOYMENTS = [
    pytest.param("hypercorn", "quart_app", marks=needs_quart, id="hypercorn-quart"),
    pytest.param("uvicorn", "quart_app", marks=needs_quart, id="uvicorn-quart"),
    pytest.param("gthread", "flask_app", id="gunicorn-gthread-flask"),
    pytest.param("preload", "flask_async_app", id="gunicorn-preload-flask-async"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "app"), DEPLOYMENTS)
def test_two_worker_deployment_starts_on_an_empty_database(
    recipe: str, app: str, tmp_path: Path
) -> None:
    """Two workers start on a database the one-off command just filled, serve concurrent
    requests without an error, and after SIGTERM exit 0 with no backend left."""
    with fresh_database() as database:
        deployment = Deployment(recipe, app, database, tmp_path)
        deployment.run_one_off()
        writes = [("POST", "/todos", {"title": f"todo {n}"}) for n in range(REQUESTS)]
        reads = [("GET", "/probe/work?sleep=0.05", None)] * REQUESTS
        with deployment.serving():
            workers = find_workers(deployment)
            responses = asyncio.run(send_all(deployment.base_url, writes + reads))
            titles = httpx.get(f"{deployment.base_url}/todos", trust_env=False).json()
            pooled = backends(database, deployment.application_name)
        left = backends_once_gone(database, deployment.application_name)
    statuses = [response.status_code for response in responses]
    assert statuses == [201] * REQUESTS + [200] * REQUESTS, deployment.log
    assert sorted(titles) == sorted(f"todo {n}" for n in range(REQUESTS))
    assert len(workers) == 2, f"only {workers} answered\n{deployment.log}"
    assert pooled > 0, "the app's backends are not where the test looks for them"
    check_stopped_cleanly(deployment, workers)
    assert left == 0, f"{left} backends of the app outlived the server"
    if recipe == "preload":  # the master imported the app, made the engine, opened nothing
        assert deployment.server is not None
        assert deployment.server.pid not in deployment.connections_by_process()


@pytest.mark.slow
def test_gevent_gives_every_greenlet_its_own_session(tmp_path: Path) -> None:
    """Under the gevent worker, concurrent requests each hold a session and a connection of
    their own; afterwards none is checked out, and SIGTERM leaves no backend."""
    parties = 12
    with fresh_database() as database:
        deployment = Deployment("gevent", "flask_app", database, tmp_path, workers=1)
        deployment.run_one_off()
        holds = [("GET", f"/probe/hold?parties={parties}", None)] * parties
        with deployment.serving():
            responses = asyncio.run(send_all(deployment.base_url, holds))
            stats = httpx.get(f"{deployment.base_url}/probe/stats", trust_env=False).json()
        left = backends_once_gone(database, deployment.application_name)
    assert [response.status_code for response in responses] == [200] * parties, deployment.log
    held = [response.json() for response in responses]
    assert len({hold["worker"] for hold in held}) == 1
    assert len({hold["session"] for hold in held}) == parties, held
    assert len({hold["backend"] for hold in held}) == parties, held
    assert stats == {"worker": held[0]["worker"], "checked_out": 0}
    check_stopped_cleanly(deployment, {held[0]["worker"]})
    assert left == 0


@pytest.mark.slow
def test_backends_stay_within_workers_times_pool_under_load(tmp_path: Path) -> None:
    """Two gthread workers of 4 threads with pool_size=1, max_overflow=1 never have more than
    2 x (1 + 1) backends, however many requests wait: a worker's threads share its pool,
    and each worker opens at most pool_size + max_overflow connections at once."""
    workers, pool_size, max_overflow = 2, 1, 1
    bound = workers * (pool_size + max_overflow)
    with fresh_database() as database:
        deployment = Deployment(
            "gthread", "flask_app", database, tmp_path, pool=(pool_size, max_overflow)
        )
        deployment.run_one_off()
        seen: list[int] = []
        done = threading.Event()

        def sample() -> None:
            for _ in range(2000):  # 20 ms apart: at most 40 s, or until the load is over
                seen.append(backends(database, deployment.application_name))
                if done.wait(0.02):
                    return

        load = [("GET", "/probe/work?sleep=0.2", None)] * 24
        with deployment.serving():
            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                responses = asyncio.run(send_all(deployment.base_url, load))
            finally:
                done.set()
                sampler.join()
    assert [response.status_code for response in responses] == [200] * len(load)
    assert 0 < max(seen) <= bound, f"backends seen: {seen}"
    most_open = deployment.most_open_by_process()
    assert len(most_open) <= workers, most_open
    # The load filled the busiest worker's pool, overflow included, and went no further.
    assert max(most_open.values()) == pool_size + max_overflow, most_open


def test_the_page_shows_the_recipes_the_tests_run() -> None:
    """Every server command on docs/deployment.md is one of RECIPES and each is on the page,
    and so are the one-off commands."""
    page = (REPO_ROOT / "docs" / "deployment.md").read_text()
    shell = "\n".join(re.findall(r"```sh\n(.*?)```", page, re.DOTALL))
    shown = set()
    for line in shell.splitlines():
        for command in line.split("&&"):
            command = command.strip()
            if command.split(" ", 1)[0] in ("gunicorn", "hypercorn", "uvicorn"):
                shown.add(normalise(command))
    assert shown == set(RECIPES.values())
    for cli, module, _, name in APPS.values():
        if module != "tests.support.deploy_flask_async":
            one_off = f"{cli} --app {name} {' '.join(ONE_OFF)}"
            assert one_off in shell, f"the page does not show {one_off!r}"


def normalise(command: str) -> str:
    """A command of the page with its numbers and app written as in RECIPES."""
    substitutions: list[tuple[str, str]] = [
        (r"(-w|--workers) \d+", r"\1 {workers}"),
        (r"-b [\d.]+:\d+", "-b {bind}"),
        (r"--host [\d.]+ --port \d+", "--host {host} --port {port}"),
        (r"\b\w+:app\b", "{app}"),
    ]
    for pattern, replacement in substitutions:
        command = re.sub(pattern, replacement, command)
    return command
