"""A multi-tenant notes API on Quart: one SQLite database per tenant, picked per request."""
