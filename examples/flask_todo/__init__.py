"""A todo-list JSON API on sync Flask, with a ``Session`` per app context."""
