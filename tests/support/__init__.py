"""What the tests share and that is not a fixture: databases, servers, scripts, fault tools.

Fixtures live in ``tests/conftest.py``; everything here is imported explicitly
(``from .support.databases import database_url``).
"""
