"""A todo-list JSON API on Flask async views, with an ``AsyncSession`` per app context."""
