"""What ``flask shell`` and ``quart shell`` offer: the session proxies, the app's scoped
sessions by name, the mapped models they were given, and ``run`` for coroutines."""

from __future__ import annotations

import typing as t

from ._app import get_state
from ._current import async_proxy, session_proxy, sync_proxy
from ._frameworks import current_app_context
from ._models import mapped_classes


def shell_context() -> dict[str, object]:
    """The shell's namespace (a shell context processor, added by ``init_app``).

    Always ``current_session``; in the app's context also ``current_sync_session`` /
    ``current_async_session`` for the kinds the app has, ``scoped_sessions`` (name to scoped
    session; an async one whose name a sync one has too is ``<name>_async``), the models of
    every scoped session given a declarative base as ``metadata=``, by class name, and, with
    an async scoped session, ``run``: ``run(coro)`` runs a coroutine to its result, on the
    loop the app's async sessions use (the default async scoped session's ``run()``).
    """
    namespace: dict[str, object] = {"current_session": session_proxy}
    ctx = current_app_context()
    state = get_state(ctx.app) if ctx is not None else None
    if state is None:
        return namespace
    named = state.named_scoped()
    scoped_sessions: dict[str, object] = {}
    for scoped in sorted(named, key=lambda scoped: scoped.is_async):  # sync names first
        key = scoped.name
        if scoped.is_async and key in scoped_sessions:
            key = f"{key}_async"
        scoped_sessions[key] = scoped
        if scoped.models is not None:
            namespace.update(mapped_classes(scoped.models))
    namespace["scoped_sessions"] = scoped_sessions
    if state.sync_default is not None:
        namespace["current_sync_session"] = sync_proxy
    if state.async_default is not None:
        namespace["current_async_session"] = async_proxy
        namespace["run"] = t.cast(t.Any, state.async_default).run
    return namespace
