"""Stress runs: the library under load and faults, on real servers and databases.

``python -m stress`` (see ``stress/README.md``) serves a Quart app on hypercorn in a
subprocess, sends it a seeded mix of requests with faults, then checks for leaks and
memory growth. Its modules, in the order a run uses them:

- :mod:`stress.plan`: the options, the request mix and the outcomes each kind expects;
- :mod:`stress.server`: the Quart app and hypercorn, in the ``--serve`` subprocess;
- :mod:`stress.process`: that subprocess seen from the parent: start, stop, its output;
- :mod:`stress.database`: PostgreSQL seen from the parent: the app's backends, its table;
- :mod:`stress.run`: the run itself: the load, the sampling, the settling;
- :mod:`stress.report`: the leak and memory checks, and the report as text or JSON;
- :mod:`stress.__main__`: the command line.
"""
