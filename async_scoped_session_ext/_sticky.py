"""The sticky primary: after a request that committed a write, its client reads the primary.

A replica may lack, for a moment, a row the primary just committed (replication lag): a
client that posts a form and is redirected to a page listing it may not see it. Opted in
per scoped session and app (``StickyPrimary(scoped, app, seconds=5)``), a response whose
session committed a write (``ReplicaSession.committed_write``) carries a cookie signed
with the app's ``SECRET_KEY`` (``itsdangerous``, a Flask dependency) and valid for
*seconds*; while it is valid, the same client's requests read from the primary
(``session.info["use_primary"]``). Other clients keep reading from the replica.
django-multidb-router calls this pinning.

The cookie is set from the ``request_finished`` signal, which both frameworks send after
every ``after_request`` function (so a commit by ``commit_on_success=True`` counts) and
before the response is sent. It is read by a ``before_request`` function, which opens the
context's session and marks it: a sync one in Flask's request thread (Quart: a worker
thread), an async one on the app's loop.
"""

from __future__ import annotations

import math
import typing as t

from itsdangerous import BadSignature, TimestampSigner

from ._context import record_of
from ._frameworks import current_app_context, is_quart_app

if t.TYPE_CHECKING:
    from flask import Flask
    from flask.sansio.app import App
    from quart import Quart


USE_PRIMARY = "use_primary"
"""The execution option, and the ``session.info`` key, that send reads to the primary."""

_SALT = "async_scoped_session_ext.sticky-primary"
_PINNED = b"primary"


class ScopedReplicas(t.Protocol):
    """A ``flask_scoped_session`` or ``async_scoped_session``, as :class:`StickyPrimary`
    uses it."""

    @property
    def is_async(self) -> bool:
        """Whether it makes async sessions."""

    @property
    def registry(self) -> t.Any:
        """The registry of its sessions, by app context."""

    def __call__(self, **kw: t.Any) -> t.Any:
        """The current context's session."""


class _Response(t.Protocol):
    """A Flask or Quart response: what the cookie is set on."""

    def set_cookie(self, key: str, value: str, **kwargs: t.Any) -> None:
        """Set the cookie *key* to *value*."""


class StickyPrimary:
    """Send a client's reads to the primary for *seconds* after it committed a write.

    :param scoped: the ``flask_scoped_session`` or ``async_scoped_session`` whose sessions
        are :class:`~async_scoped_session_ext.replicas.ReplicaSession` (or wrap one).
    :param app: the Flask or Quart app; or call :meth:`init_app` later.
    :param seconds: how long after its last committing request a client reads the primary
        (cover the replication lag you see, with a margin).
    :param cookie_name: the name of the signed cookie.

    The app needs a ``SECRET_KEY``: the cookie is signed with it, so a client cannot pin
    itself to the primary without having written.
    """

    def __init__(
        self,
        scoped: ScopedReplicas,
        app: App | None = None,
        *,
        seconds: float = 5.0,
        cookie_name: str = "asse_primary",
    ) -> None:
        self.scoped = scoped
        self.seconds = seconds
        self.cookie_name = cookie_name
        if app is not None:
            self.init_app(app)

    def init_app(self, app: App) -> None:
        """Read the cookie before each request of *app*, and set it after committing ones."""
        pin = self._pin_async if self.scoped.is_async else self._pin
        if is_quart_app(app):
            from quart import request as quart_request
            from quart.signals import request_finished as quart_finished

            quart_app = t.cast("Quart", app)

            async def before_quart() -> None:
                if self.pinned(quart_app, quart_request.cookies.get(self.cookie_name)):
                    await quart_app.ensure_async(pin)()

            async def finished_quart(sender: App, response: _Response, **kw: object) -> None:
                self.remember(sender, response)

            quart_app.before_request(before_quart)
            quart_finished.connect(finished_quart, quart_app, weak=False)
            return

        from flask import request
        from flask.signals import request_finished

        flask_app = t.cast("Flask", app)

        def before() -> None:
            if self.pinned(flask_app, request.cookies.get(self.cookie_name)):
                flask_app.ensure_sync(pin)()

        def finished(sender: App, response: _Response, **kw: object) -> None:
            self.remember(sender, response)

        flask_app.before_request(before)
        request_finished.connect(finished, flask_app, weak=False)

    def pinned(self, app: App, cookie: str | None) -> bool:
        """Whether *cookie* is this extension's, signed by *app* and not expired."""
        if not cookie:
            return False
        try:
            self._signer(app).unsign(cookie, max_age=math.ceil(self.seconds))
        except BadSignature:  # forged, or expired (SignatureExpired)
            return False
        return True

    def remember(self, app: App, response: _Response) -> None:
        """Set the cookie on *response* if the context's session committed a write."""
        ctx = current_app_context()
        record = record_of(ctx) if ctx is not None else None
        session = None if record is None else record.sessions.get(self.scoped.registry)
        session = getattr(session, "sync_session", session)  # an AsyncSession's ReplicaSession
        if not getattr(session, "committed_write", False):
            return
        value = self._signer(app).sign(_PINNED).decode()
        response.set_cookie(
            self.cookie_name,
            value,
            max_age=math.ceil(self.seconds),
            httponly=True,
            samesite="Lax",
        )

    def _pin(self) -> None:
        self.scoped().info[USE_PRIMARY] = True

    async def _pin_async(self) -> None:
        self.scoped().info[USE_PRIMARY] = True

    def _signer(self, app: App) -> TimestampSigner:
        if not app.secret_key:
            raise RuntimeError(_NO_SECRET.format(app=app))
        return TimestampSigner(app.secret_key, salt=_SALT)


_NO_SECRET = (
    "StickyPrimary signs its cookie with the app's SECRET_KEY, and {app!r} has none, so"
    " it cannot tell a client that wrote from one that claims to. Set"
    " app.config['SECRET_KEY'] (or app.secret_key) to a long random value."
)
