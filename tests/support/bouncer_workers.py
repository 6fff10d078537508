"""Many server workers through one real PgBouncer in transaction mode, and what they leave.

A run: a fresh database with the deployment apps' table, a PgBouncer in front of it with
``default_pool_size = POOL``, and one of docs/deployment.md's servers with ``WORKERS``
workers (``tests/support/deploy_probes.py`` with ``ASSE_DEPLOY_PGBOUNCER``) whose
``DATABASE_URL`` is the PgBouncer. While it runs, a thread counts the database's backends in
``pg_stat_activity`` (every one of them is a PgBouncer server connection); once the server
has stopped, ``POOL`` transactions held open at once through PgBouncer reach each of its
server connections and count the prepared statements left on it.

Used by ``tests/test_pgbouncer_workers.py`` and ``bench/pgbouncer_workers.py``.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import dataclasses
import threading
import typing as t
from pathlib import Path

from sqlalchemy import make_url

from .databases import POSTGRES_URL, connect_admin
from .deployment import APPS, Deployment, fresh_database
from .pgbouncer import PgBouncer

if t.TYPE_CHECKING:
    from types import TracebackType

POOL = 3  # PgBouncer's default_pool_size: server connections for the app's database and user
WORKERS = 4
APP_POOL = (2, 2)  # each worker's pool_size, max_overflow: up to 4 x 4 = 16 PgBouncer clients
SAMPLE_EVERY = 0.02  # seconds between two counts of the backends
MAX_SAMPLES = 15_000  # at most 300 s of sampling, whatever happens

#: The runs: name -> (a recipe of tests/support/deployment.py, an app of its APPS).
VARIANTS = {
    "hypercorn-quart": ("hypercorn", "quart_app"),
    "gunicorn-gthread-flask-async": ("gthread", "flask_async_app"),
    "gunicorn-gthread-flask": ("gthread", "flask_app"),
}

TABLE = "create table todos (id serial primary key, title varchar(200) not null)"
COUNT_BACKENDS = (
    "select count(*) from pg_stat_activity where datname = %s and backend_type = 'client backend'"
)
COUNT_STATEMENTS = "select pg_backend_pid(), count(*) from pg_prepared_statements"


@dataclasses.dataclass
class BouncedDeployment(Deployment):
    """A deployment whose ``DATABASE_URL`` is *bouncer_url*, configured by the probes for
    PgBouncer's transaction mode (*how*: ``"preset"`` or ``"named"``, see deploy_probes)."""

    bouncer_url: str = ""
    how: str = "preset"

    def environ(self) -> dict[str, str]:
        return {
            **super().environ(),
            "DATABASE_URL": self.bouncer_url,
            "ASSE_DEPLOY_PGBOUNCER": self.how,
        }


class BackendSampler:
    """Counts *database*'s backends every :data:`SAMPLE_EVERY` s on one connection, in a
    thread, from ``__enter__`` to ``__exit__``; ``most`` is the highest count seen."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.samples: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._error: BaseException | None = None

    @property
    def most(self) -> int:
        return max(self.samples, default=0)

    def _sample(self) -> None:
        try:
            with connect_admin(autocommit=True) as conn:
                for _ in range(MAX_SAMPLES):
                    row = conn.execute(COUNT_BACKENDS, (self.database,)).fetchone()
                    self.samples.append(int(row[0]) if row else 0)
                    if self._done.wait(SAMPLE_EVERY):
                        return
        except BaseException as error:  # shown by __exit__, in the caller's thread
            self._error = error

    def __enter__(self) -> BackendSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join(10)
        if self._error is not None and exc is None:
            raise RuntimeError("counting the backends failed") from self._error


@dataclasses.dataclass
class Run:
    """One run; ``statements`` and ``servers_shown`` are filled once the server has stopped."""

    name: str
    deployment: BouncedDeployment
    bouncer: PgBouncer
    sampler: BackendSampler
    #: pid of each server connection -> prepared statements left on it
    statements: dict[int, int] = dataclasses.field(default_factory=dict)
    #: server connections of the database in PgBouncer's ``SHOW SERVERS``, at the end
    servers_shown: int = -1

    @property
    def most_servers(self) -> int:
        """The most server connections seen at once in ``pg_stat_activity``."""
        return self.sampler.most

    @property
    def client_connections(self) -> int:
        """The most connections the workers' pools held open at once, summed over workers:
        the PgBouncer clients the app had at most."""
        return sum(self.deployment.most_open_by_process().values())


def create_table(database: str) -> None:
    """The deployment apps' ``todos`` table, made directly (not through PgBouncer)."""
    import psycopg

    url = make_url(POSTGRES_URL).set(drivername="postgresql", database=database)
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(TABLE)


def _connect(bouncer: PgBouncer, **kwargs: t.Any) -> t.Any:
    import psycopg

    url = make_url(bouncer.url("psycopg"))
    return psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        connect_timeout=5,
        prepare_threshold=None,  # never prepare: this client must not add statements
        **{"dbname": url.database, **kwargs},
    )


def prepared_statements(bouncer: PgBouncer) -> dict[int, int]:
    """The prepared statements on each of PgBouncer's server connections: :data:`POOL`
    clients each hold a transaction open, so each is given a server connection of its own
    (a new one has none)."""
    counts: dict[int, int] = {}
    with contextlib.ExitStack() as stack:
        for _ in range(POOL):
            conn = stack.enter_context(_connect(bouncer))  # not autocommit: holds a transaction
            row = conn.execute(COUNT_STATEMENTS).fetchone()
            counts[int(row[0])] = int(row[1])
    return counts


def servers_shown(bouncer: PgBouncer, database: str) -> int:
    """How many server connections of *database* PgBouncer's admin console lists."""
    with _connect(bouncer, dbname="pgbouncer", autocommit=True) as conn:
        cursor = conn.execute("SHOW SERVERS")  # no parameters: the simple query protocol
        names = [column.name for column in cursor.description or []]
        rows = cursor.fetchall()
    return sum(1 for row in rows if dict(zip(names, row, strict=True))["database"] == database)


@contextlib.contextmanager
def behind_pgbouncer(
    name: str, tmp_path: Path, *, how: str = "preset", binary: str | None = None
) -> cabc.Iterator[Run]:
    """Serve the variant *name* of :data:`VARIANTS` through a new PgBouncer; yield the run
    while the server answers. After the block the server, PgBouncer and the database are
    gone, and the run's figures are complete."""
    recipe, app = VARIANTS[name]
    driver = APPS[app][2]
    with fresh_database() as database:
        create_table(database)
        target = make_url(POSTGRES_URL).set(database=database)
        settings = {"admin_users": target.username or "postgres", "max_client_conn": "200"}
        bouncer = PgBouncer(target, binary=binary, default_pool_size=POOL, settings=settings)
        with bouncer, BackendSampler(database) as sampler:
            deployment = BouncedDeployment(
                recipe,
                app,
                database,
                tmp_path,
                workers=WORKERS,
                pool=APP_POOL,
                bouncer_url=bouncer.url(driver),
                how=how,
            )
            run = Run(name, deployment, bouncer, sampler)
            with deployment.serving():
                yield run
            run.statements = prepared_statements(bouncer)
            run.servers_shown = servers_shown(bouncer, database)
