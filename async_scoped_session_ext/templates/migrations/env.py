"""Alembic's environment: migrates every engine of the app's scoped sessions.

Run by 'flask db ...' / 'quart db ...' inside the app's context. By default each engine's
models are the scoped session's 'metadata=' argument; pass target_metadata= to choose here:
a MetaData (an app with one engine) or {engine name: MetaData} (only those are migrated).
"""

from async_scoped_session_ext.migrations import run_migrations

run_migrations(target_metadata=None)
