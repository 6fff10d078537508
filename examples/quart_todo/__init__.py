"""A todo-list JSON API on Quart, with an ``AsyncSession`` per app context."""
