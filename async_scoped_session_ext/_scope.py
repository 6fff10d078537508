"""The scope key (the current app context object) and the weak registry keyed by it."""

from __future__ import annotations

import sys
import typing as t
import weakref

from sqlalchemy.util import ScopedRegistry

_T = t.TypeVar("_T")

# Where each framework keeps its current app context. Quart is checked first: a Quart app
# never sets Flask's variable, and a module that was never imported holds no context.
_CONTEXT_MODULES = ("quart.globals", "flask.globals")

NO_APP_CONTEXT_MESSAGE = """\
Working outside of application context.

This code tried to use a scoped SQLAlchemy session, which lives as long as the current
Flask or Quart application context, but no application context is pushed. To solve this,
set up an app context using 'with app.app_context()' (Flask) or
'async with app.app_context()' (Quart), or run the code inside a request, a CLI command or
'flask shell' / 'quart shell'.\
"""


class AppContextLike(t.Protocol):
    """What the library needs of a Flask or Quart ``AppContext``."""

    @property
    def app(self) -> t.Any: ...


def current_app_context() -> AppContextLike | None:
    """Return the innermost pushed Quart or Flask app context object, or ``None``."""
    # Unrolled _CONTEXT_MODULES: this runs on every current_session access.
    modules = sys.modules
    quart_globals = modules.get("quart.globals")
    if quart_globals is not None:
        ctx = quart_globals._cv_app.get(None)
        if ctx is not None:
            return ctx  # type: ignore[no-any-return]
    flask_globals = modules.get("flask.globals")
    if flask_globals is not None:
        return flask_globals._cv_app.get(None)  # type: ignore[no-any-return]
    return None


def in_request() -> bool:
    """Whether a Quart request or websocket, or a Flask request, is being handled."""
    for name, variables in _REQUEST_VARIABLES:
        module = sys.modules.get(name)
        if module is not None and any(getattr(module, v).get(None) for v in variables):
            return True
    return False


_REQUEST_VARIABLES = (
    ("quart.globals", ("_cv_request", "_cv_websocket")),
    ("flask.globals", ("_cv_request",)),
)


def scope_key() -> AppContextLike:
    """The scope function: the current app context object itself.

    Keying on the object (not its ``id()``) means a later context can never be handed the
    session of an earlier one whose teardown was skipped.
    """
    ctx = current_app_context()
    if ctx is None:
        raise RuntimeError(NO_APP_CONTEXT_MESSAGE)
    return ctx


def _current_push(ctx: AppContextLike) -> object:
    """The token of the context's innermost push (both frameworks keep a list of them)."""
    tokens = getattr(ctx, "_cv_tokens", None)
    return tokens[-1] if tokens else None


_NOT_CLOSING = object()


class ContextRegistry(ScopedRegistry[_T]):
    """A :class:`~sqlalchemy.util.ScopedRegistry` keyed by the app context object.

    Entries are held in a :class:`weakref.WeakKeyDictionary`: an entry whose teardown never
    ran disappears with its context instead of pinning it (and its session) in memory.
    ``on_new_scope`` is called with the context before an object is stored for it, and may
    refuse by raising.
    """

    __slots__ = ("on_new_scope", "_closing")

    registry: weakref.WeakKeyDictionary[AppContextLike, _T]
    on_new_scope: t.Callable[[AppContextLike], None]

    def __init__(
        self,
        createfunc: t.Callable[[], _T],
        on_new_scope: t.Callable[[AppContextLike], None],
    ) -> None:
        super().__init__(createfunc, scope_key)
        self.registry = weakref.WeakKeyDictionary()
        self.on_new_scope = on_new_scope
        # Contexts being torn down, with the push (token) the teardown belongs to.
        self._closing: weakref.WeakKeyDictionary[AppContextLike, object] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self) -> _T:
        key = current_app_context()  # scope_key(), inlined: every session access gets here
        if key is None:
            raise RuntimeError(NO_APP_CONTEXT_MESSAGE)
        try:
            return self.registry[key]
        except KeyError:
            self.on_new_scope(key)
            return self.registry.setdefault(key, self.createfunc())

    def set(self, obj: _T) -> None:
        key = self.scopefunc()
        self.on_new_scope(key)
        self.registry[key] = obj

    def mark_closing(self, ctx: AppContextLike | None = None) -> None:
        """Refuse new objects for *ctx* (the current context) until it is pushed again.

        Called by the teardown, so that a task still running in the ending context cannot
        open a session that nothing would close. Flask 3.1's ``stream_with_context`` pushes
        the same context again after its teardown; that push may open a session again.
        """
        ctx = self.scopefunc() if ctx is None else ctx
        self._closing[ctx] = _current_push(ctx)

    def is_closing(self, ctx: AppContextLike) -> bool:
        """Whether *ctx* is being (or has been) torn down and was not pushed again since."""
        marker = self._closing.get(ctx, _NOT_CLOSING)
        return marker is not _NOT_CLOSING and marker is _current_push(ctx)

    def peek(self, ctx: AppContextLike | None = None) -> _T | None:
        """The object of *ctx* (the current context), or ``None``; never creates one."""
        found: _T | None = self.registry.get(self.scopefunc() if ctx is None else ctx)
        return found

    def pop(self) -> _T | None:
        """Remove and return the current context's object, or ``None`` if it has none."""
        popped: _T | None = self.registry.pop(self.scopefunc(), None)
        return popped

    def __len__(self) -> int:
        return len(self.registry)
