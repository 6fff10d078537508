"""The cost of one ``current_session`` attribute access, against the plain session's.

``current_session.execute`` inside a pushed app context resolves the app's scoped session
and looks the bound method up on it. The baseline is the same lookup on the plain object a
hand-written view would hold. Each is timed with :mod:`timeit`, repeats interleaved.
"""

from __future__ import annotations

import asyncio
import statistics
import timeit
from dataclasses import dataclass

from flask import Flask
from quart import Quart
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from async_scoped_session_ext import async_scoped_session, current_session, flask_scoped_session

GOAL_NS = 1000.0  # at most this many ns per access over the plain lookup


@dataclass(frozen=True)
class AccessCost:
    """Median ns per ``.execute`` lookup through ``current_session`` and on the plain object."""

    setup: str
    proxied_ns: float
    plain_ns: float
    number: int
    repeat: int

    @property
    def overhead_ns(self) -> float:
        return self.proxied_ns - self.plain_ns

    @property
    def met(self) -> bool:
        return self.overhead_ns <= GOAL_NS


def _time(plain: object, number: int, repeat: int) -> tuple[float, float]:
    """Median ns per lookup of ``current_session.execute`` and of ``plain.execute``."""
    names = {"current_session": current_session, "plain": plain}
    proxied = timeit.Timer("current_session.execute", globals=names)
    direct = timeit.Timer("plain.execute", globals=names)
    proxied_runs: list[float] = []
    direct_runs: list[float] = []
    for index in range(repeat):
        pair = ((proxied, proxied_runs), (direct, direct_runs))
        for timer, runs in pair if index % 2 == 0 else pair[::-1]:
            runs.append(timer.timeit(number) / number * 1e9)
    return statistics.median(proxied_runs), statistics.median(direct_runs)


def sync_flask(number: int, repeat: int) -> AccessCost:
    """``flask_scoped_session`` in a pushed Flask app context; plain: the context's ``Session``."""
    app = Flask("bench_access")
    engine = create_engine("sqlite://")
    scoped = flask_scoped_session(sessionmaker(engine), app)
    try:
        with app.app_context():
            plain = scoped()
            proxied_ns, plain_ns = _time(plain, number, repeat)
    finally:
        engine.dispose()
    return AccessCost("sync Flask (flask_scoped_session)", proxied_ns, plain_ns, number, repeat)


def quart(number: int, repeat: int) -> AccessCost:
    """``async_scoped_session`` in a pushed Quart app context; plain: its ``AsyncSession``."""
    app = Quart("bench_access_quart")
    engine = create_async_engine("sqlite+aiosqlite://")
    scoped = async_scoped_session(async_sessionmaker(engine), app)

    async def measure() -> tuple[float, float]:
        try:
            async with app.app_context():
                plain = scoped()
                result = _time(plain, number, repeat)
                await scoped.remove()
                return result
        finally:
            await engine.dispose()

    proxied_ns, plain_ns = asyncio.run(measure())
    return AccessCost("Quart (async_scoped_session)", proxied_ns, plain_ns, number, repeat)


def measure_all(number: int, repeat: int) -> list[AccessCost]:
    return [sync_flask(number, repeat), quart(number, repeat)]
