"""The verdict of a run: the leak and memory checks, and the report as text or JSON.

:func:`judge` turns what a run measured (:class:`Measurements`) into a :class:`StressReport`:
its ``data`` is the JSON report (``--json``), its ``failures`` the checks that failed, and
:func:`render` shows it.
"""

from __future__ import annotations

import collections
import importlib.metadata
import platform
import statistics
import typing as t
from dataclasses import asdict, dataclass, field

from .plan import (
    BAD_BODY,
    CLIENT_TIMEOUT,
    CONNECTION_ERROR,
    DEADLINE,
    DISCONNECT,
    DISCONNECTED,
    ERROR_500,
    MIX,
    OK_200,
    RAISE,
    REQUEST_TIMEOUT,
    TIMEOUT,
    Outcome,
    Planned,
    StressConfig,
    shown_url,
)
from .process import KNOWN_ASYNCPG_BLOCK


@dataclass
class Measurements:
    """What a run measured, as :func:`judge` reads it."""

    config: StressConfig
    application_name: str
    table: str
    planned: list[Planned]
    outcomes: dict[int, Outcome]  # by request number
    samples: list[dict[str, t.Any]]  # the server's /stats every sample_interval
    sample_errors: list[str]
    warm: dict[str, t.Any] | None  # /stats after the warm-up, after gc.collect()
    warm_trimmed: dict[str, t.Any] | None  # and after malloc_trim(0) too
    cleanup_errors: list[str]
    #: The rest, in the JSON report's order: "load", "settle", "rows" (taken out by judge),
    #: "server_stop", "backends_after_shutdown", "table_left_by_server", "server_output",
    #: "runtime_seconds".
    data: dict[str, t.Any]


@dataclass
class StressReport:
    """What a run found. ``failures`` is empty when it is clean."""

    data: dict[str, t.Any]
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed and every outcome was expected."""
        return not self.failures

    def render(self) -> str:
        """The human-readable report."""
        return render(self)


def versions() -> dict[str, str]:
    """The versions of Python and of the packages the run exercises."""
    found = {"python": platform.python_version()}
    for dist in ("quart", "hypercorn", "sqlalchemy", "asyncpg", "httpx"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "missing"
    return found


def mb(kb: int | None) -> float | None:
    """*kb* in MB."""
    return None if kb is None else kb / 1024


# --- the verdict ----------------------------------------------------------------------------


def judge(measured: Measurements) -> StressReport:
    """The report of a run: the requests' outcomes, the leak checks, the memory."""
    config, data = measured.config, measured.data
    failures: list[str] = []
    outcomes = [measured.outcomes[n] for n in sorted(measured.outcomes)]
    data["config"] = {
        **{k: v for k, v in asdict(config).items() if k not in {"url", "server_log"}},
        "url": shown_url(config.url),
        "application_name": measured.application_name,
        "table": measured.table,
    }
    data["versions"] = versions()
    data["requests"] = summarize_requests(measured, outcomes, failures)
    data["server_counters"] = data["settle"]["end"]["counters"]
    data["leaks"] = check_leaks(measured, outcomes, data.pop("rows"), failures)
    data["memory"] = check_memory(measured, failures)
    data["samples"] = measured.samples
    data["ok"] = not failures
    data["failures"] = failures
    return StressReport(data, failures)


def summarize_requests(
    measured: Measurements, outcomes: list[Outcome], failures: list[str]
) -> dict[str, t.Any]:
    """The outcomes by kind, status and error, and the latency; a failure for each surprise."""
    config, load = measured.config, measured.data["load"]
    sent = len(outcomes)
    not_sent = config.requests - sent
    by_kind: dict[str, dict[str, int]] = {}
    for kind in MIX:
        counter = collections.Counter(o.result for o in outcomes if o.kind == kind)
        by_kind[kind] = {"planned": sum(1 for p in measured.planned if p.kind == kind)}
        by_kind[kind].update(sorted(counter.items()))
    statuses = collections.Counter(o.result for o in outcomes if o.result.isdigit())
    results = collections.Counter(o.result for o in outcomes)
    unexpected = [o for o in outcomes if not o.expected]
    ok_seconds = sorted(o.seconds for o in outcomes if o.result == OK_200)
    errors = {
        "client timeouts (intended)": results[CLIENT_TIMEOUT],
        "disconnects (intended)": results[DISCONNECTED],
        "500s (intended)": sum(1 for o in outcomes if o.result == ERROR_500 and o.kind == RAISE),
        "500s (unintended)": sum(1 for o in outcomes if o.result == ERROR_500 and o.kind != RAISE),
        "other statuses": sum(n for s, n in statuses.items() if s not in {OK_200, ERROR_500}),
        "request timeouts": results[REQUEST_TIMEOUT],
        "connection errors": results[CONNECTION_ERROR],
        "bad bodies": results[BAD_BODY],
        "cut by the deadline": results[DEADLINE],
    }
    if not_sent:
        failures.append(f"{not_sent} requests were never sent (--max-seconds ran out)")
    if unexpected:
        kinds = collections.Counter(f"{o.kind} -> {o.result}" for o in unexpected)
        failures.append(f"{len(unexpected)} unexpected outcomes: {dict(kinds)}")
    return {
        "planned": config.requests,
        "sent": sent,
        "not_sent": not_sent,
        "expected": sent - len(unexpected),
        "unexpected": len(unexpected),
        "seconds": round(load["seconds"], 2),
        "per_second": round(sent / load["seconds"], 1) if load["seconds"] else None,
        "by_status": dict(sorted(statuses.items())),
        "by_kind": by_kind,
        "errors": errors,
        "latency_ms_200": {
            "p50": round(1000 * statistics.median(ok_seconds), 1) if ok_seconds else None,
            "p95": round(1000 * ok_seconds[int(0.95 * (len(ok_seconds) - 1))], 1)
            if ok_seconds
            else None,
            "max": round(1000 * ok_seconds[-1], 1) if ok_seconds else None,
        },
        "unexpected_samples": [asdict(o) for o in unexpected[:20]],
    }


def check_leaks(
    measured: Measurements,
    outcomes: list[Outcome],
    rows: list[tuple[int, bool]],
    failures: list[str],
) -> dict[str, t.Any]:
    """The leak checks, on the settled server, PostgreSQL, the table and the server's output."""
    config, data = measured.config, measured.data
    settle = data["settle"]
    states: dict[str, int] = settle["backend_states"]
    committed_expected = {
        o.n for o in outcomes if o.result == OK_200 and measured.planned[o.n].commit
    }
    committed_found = [req for req, committed in rows if committed]
    uncommitted_found = [req for req, committed in rows if not committed]
    pool_limit = config.pool_size + config.max_overflow
    max_checked_out = max((s["checked_out"] for s in measured.samples), default=0)
    max_backends = max((s["backends"] for s in measured.samples), default=0)
    # A connection invalidated when its request is cancelled (a hang-up, a client timeout)
    # leaves its backend in pg_stat_activity for a moment after the pool has replaced it.
    cancelled = sum(1 for p in measured.planned if p.kind in (DISCONNECT, TIMEOUT))
    backend_limit = pool_limit + cancelled
    output = data["server_output"]["problems"]
    stop = data["server_stop"]
    in_transaction = sum(n for s, n in states.items() if s.startswith("idle in transaction"))
    idle, active = states.get("idle", 0), states.get("active", 0)
    other_states = sum(states.values()) - idle - active - in_transaction
    after_shutdown = data["backends_after_shutdown"]
    unexpected_exceptions = data["server_counters"].get("unexpected_exception", 0)
    leaks: list[tuple[str, object, str, bool]] = [
        ("pool checked out", settle["checked_out"], "0", settle["checked_out"] == 0),
        ("sessions in the registry", settle["registry"], "0", settle["registry"] == 0),
        ("  after gc.collect()", settle["registry_after_gc"], "0",
         settle["registry_after_gc"] == 0),
        ("backends active", active, "0", active == 0),
        ("backends idle in transaction", in_transaction, "0", in_transaction == 0),
        ("backends in other states", other_states, "0", other_states == 0),
        ("backends idle", idle, f"<= {config.pool_size}", idle <= config.pool_size),
        ("pool checked out max during the run", max_checked_out, f"<= {pool_limit}",
         max_checked_out <= pool_limit),
        ("backends max during the run", max_backends,
         f"<= {backend_limit} (pool {pool_limit} + {cancelled} cancelled)",
         max_backends <= backend_limit),
        ("backends after shutdown", after_shutdown, "0", after_shutdown == 0),
        ("table dropped", "yes" if data["table_left_by_server"] is not None else "unknown",
         "yes", data["table_left_by_server"] is not None),
        ("uncommitted rows visible", len(uncommitted_found), "0", not uncommitted_found),
        ("committed rows", len(committed_found), f"== {len(committed_expected)}",
         sorted(committed_found) == sorted(committed_expected)),
        *((f"server output: {name}", count, "0", count == 0) for name, count in output.items()),
        ("server unexpected exceptions", unexpected_exceptions, "0",
         unexpected_exceptions == 0),
        ("server stopped by SIGTERM", stop["how"], "terminated", stop["how"] == "terminated"),
    ]  # fmt: skip
    failures.extend(f"cleanup failed: {error}" for error in measured.cleanup_errors)
    for name, value, limit, ok in leaks:
        if not ok:
            failures.append(f"leak check failed: {name.strip()} = {value} (want {limit})")
    return {
        "settled": settle["settled"],
        "settle_seconds": settle["seconds"],
        "checks": [
            {"check": name, "value": value, "limit": limit, "ok": ok}
            for name, value, limit, ok in leaks
        ],
        "backend_states": states,
        "rows": {
            "committed": len(committed_found),
            "committed_expected": len(committed_expected),
            "missing": sorted(committed_expected - set(committed_found))[:20],
            "unexpected": sorted(set(committed_found) - committed_expected)[:20],
            "uncommitted": sorted(uncommitted_found)[:20],
        },
    }


def check_memory(measured: Measurements, failures: list[str]) -> dict[str, t.Any]:
    """The server's RSS after the warm-up and at the end; a failure past --max-growth-mb."""
    config, settle, samples = measured.config, measured.data["settle"], measured.samples
    warm, warm_trimmed = measured.warm, measured.warm_trimmed
    warm_kb = None if warm is None else warm["rss_kb"]
    end_kb = settle["end"]["rss_kb"]
    sampled = [s["rss_kb"] for s in samples if s["rss_kb"] is not None]
    growth = None if warm_kb is None or end_kb is None else (end_kb - warm_kb) / 1024
    trimmed = warm_trimmed is not None and bool(warm_trimmed["trimmed"])
    warm_trim_kb = warm_trimmed["rss_kb"] if trimmed and warm_trimmed else None
    end_trim_kb = settle["end_trimmed"]["rss_kb"] if trimmed else None
    trimmed_growth = (
        None if warm_trim_kb is None or end_trim_kb is None else (end_trim_kb - warm_trim_kb) / 1024
    )
    judged = trimmed_growth if trimmed_growth is not None else growth
    if config.max_growth_mb is not None and judged is not None:
        if judged > config.max_growth_mb:
            failures.append(
                f"server RSS grew by {judged:.1f} MB (more than --max-growth-mb"
                f" {config.max_growth_mb})"
            )
    return {
        "rss_mb_after_warmup": mb(warm_kb),
        "warmup_requests": None if warm is None else warm["after_requests"],
        "rss_mb_end": mb(end_kb),
        "growth_mb": growth,
        "rss_mb_max_sampled": mb(max(sampled)) if sampled else None,
        "rss_mb_after_warmup_trimmed": mb(warm_trim_kb),
        "rss_mb_end_trimmed": mb(end_trim_kb),
        "growth_mb_trimmed": trimmed_growth,
        "samples": len(samples),
        "sample_errors": measured.sample_errors[:10],
        "max_registry_sampled": max((s["registry"] for s in samples), default=0),
    }


# --- the text -------------------------------------------------------------------------------


def render(report: StressReport) -> str:
    """The human-readable report."""
    data = report.data
    lines = [*render_requests(data), "", *render_leaks(data), "", *render_memory(data)]
    stop = data["server_stop"]
    left = data["table_left_by_server"]
    table_by_server = "unknown" if left is None else "no (dropped now)" if left else "yes"
    lines += [
        "",
        f"server stop: {stop['how']} (status {stop['returncode']}) in {stop['seconds']:.1f} s;"
        f" table dropped by the server: {table_by_server}",
        f"runtime: {data['runtime_seconds']:.1f} s",
        "",
    ]
    if report.ok:
        lines.append("RESULT: OK (no leaks, every outcome expected)")
    else:
        lines.append("RESULT: FAILED")
        lines.extend(f"  - {failure}" for failure in report.failures)
    return "\n".join(lines)


def render_requests(data: dict[str, t.Any]) -> list[str]:
    """The run's settings and versions, then what became of the requests."""
    config, requests = data["config"], data["requests"]
    lines = [
        f"Quart on hypercorn (subprocess) + async_scoped_session on {config['url']} (asyncpg)",
        f"{config['requests']} requests, concurrency {config['concurrency']},"
        f" seed {config['seed']}, pool {config['pool_size']}+{config['max_overflow']},"
        f" max {config['max_seconds']:g} s; application_name {config['application_name']}",
        "  ".join(f"{name} {version}" for name, version in data["versions"].items()),
        "",
        f"requests: {requests['sent']} sent of {requests['planned']} ({requests['not_sent']}"
        f" not sent) in {requests['seconds']:.1f} s = {requests['per_second']} req/s;"
        f" {requests['expected']} expected outcomes, {requests['unexpected']} unexpected",
    ]
    results = sorted({r for counts in requests["by_kind"].values() for r in counts} - {"planned"})
    header = f"  {'kind':<11}{'planned':>8}" + "".join(f"{r:>16}" for r in results)
    lines.append(header)
    for kind, counts in requests["by_kind"].items():
        cells = "".join(f"{counts.get(r, 0):>16}" for r in results)
        lines.append(f"  {kind:<11}{counts['planned']:>8}{cells}")
    lines.append(
        "responses by status: "
        + (", ".join(f"{s}: {n}" for s, n in requests["by_status"].items()) or "none")
    )
    lines.append("errors by kind:")
    lines.extend(f"  {name:<28}{count:>8}" for name, count in requests["errors"].items())
    latency = requests["latency_ms_200"]
    lines.append(
        f"latency of 200s: p50 {latency['p50']} ms, p95 {latency['p95']} ms,"
        f" max {latency['max']} ms"
    )
    lines.append(
        "server handlers: "
        + ", ".join(f"{k} {v}" for k, v in sorted(data["server_counters"].items()))
    )
    for sample in requests["unexpected_samples"][:10]:
        lines.append(
            f"  unexpected: #{sample['n']} {sample['kind']} -> {sample['result']}"
            f" {sample['detail']!r}"
        )
    return lines


def render_leaks(data: dict[str, t.Any]) -> list[str]:
    """The leak checks, and the server's output lines that failed them."""
    leaks = data["leaks"]
    lines = [
        f"leaks (settled: {'yes' if leaks['settled'] else 'NO'}, after {leaks['settle_seconds']}"
        f" s; backend states {leaks['backend_states'] or '{}'}):",
    ]
    for check in leaks["checks"]:
        verdict = "ok" if check["ok"] else "LEAK"
        lines.append(f"  {check['check']:<42}{check['value']!s:>12}  {check['limit']:<12}{verdict}")
    for sample in data["server_output"]["samples"]:
        lines.append(f"  server: {sample}")
    known = data["server_output"]["known_asyncpg_cancelled_connect"]
    if known:
        lines.append(
            f"  not counted: {known} x asyncpg 'Future exception was never retrieved ..."
            f" {KNOWN_ASYNCPG_BLOCK}' (a cancelled connect; see stress/README.md)"
        )
    return lines


def render_memory(data: dict[str, t.Any]) -> list[str]:
    """The server's RSS: after the warm-up, at the end, the growth, the highest sampled."""
    memory = data["memory"]

    def show(value: float | None, sign: bool = False) -> str:
        return "n/a" if value is None else f"{value:+.1f} MB" if sign else f"{value:.1f} MB"

    lines = [
        "memory (server RSS):",
        f"  {'after warm-up (' + str(memory['warmup_requests']) + ' requests, gc)':<40}"
        f"{show(memory['rss_mb_after_warmup'])}",
        f"  {'at the end (settled, gc)':<40}{show(memory['rss_mb_end'])}",
        f"  {'growth':<40}{show(memory['growth_mb'], sign=True)}",
        f"  {'after warm-up, gc + malloc_trim(0)':<40}"
        f"{show(memory['rss_mb_after_warmup_trimmed'])}",
        f"  {'at the end, gc + malloc_trim(0)':<40}{show(memory['rss_mb_end_trimmed'])}",
        f"  {'growth after malloc_trim(0)':<40}{show(memory['growth_mb_trimmed'], sign=True)}",
        f"  {'max sampled (' + str(memory['samples']) + ' samples)':<40}"
        f"{show(memory['rss_mb_max_sampled'])}",
        f"  {'max sessions registered at a sample':<40}{memory['max_registry_sampled']}",
    ]
    if memory["sample_errors"]:
        lines.append(f"  sample errors: {memory['sample_errors']}")
    return lines
