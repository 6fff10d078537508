"""A small stress run: hypercorn + Quart on PostgreSQL with faults, then the leak checks.

The full run is ``python3 -m nox -s stress`` (5,000 requests); see ``stress/README.md``.
"""

from __future__ import annotations

import pytest

from .support.databases import postgres_url, require_postgres
from .support.environment import QUART_MISSING

pytest.importorskip("quart", reason=QUART_MISSING)

from stress.plan import DISCONNECT, RAISE, TIMEOUT, StressConfig
from stress.run import run_stress


@pytest.mark.slow
async def test_small_stress_run_leaks_nothing() -> None:
    """300 mixed requests (16 at a time): every outcome expected, nothing left held."""
    require_postgres()
    config = StressConfig(
        url=postgres_url("asyncpg"),
        requests=300,
        concurrency=16,
        max_seconds=60,
        request_timeout=20,
        sample_interval=0.5,
    )
    report = await run_stress(config)
    data = report.data

    assert report.ok, report.render()
    requests = data["requests"]
    assert requests["sent"] == 300 and requests["unexpected"] == 0
    failed_checks = [check for check in data["leaks"]["checks"] if not check["ok"]]
    assert failed_checks == []
    assert data["leaks"]["settled"] is True
    # The faults were really exercised: 500s from raising views, handlers cancelled by
    # clients that went away.
    by_kind = requests["by_kind"]
    assert by_kind[RAISE].get("500", 0) == by_kind[RAISE]["planned"] > 0
    assert by_kind[DISCONNECT]["planned"] + by_kind[TIMEOUT]["planned"] > 0
    assert data["server_counters"].get("cancelled", 0) > 0
    assert data["server_stop"]["how"] == "terminated"
    assert data["table_left_by_server"] is False
