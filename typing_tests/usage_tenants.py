"""Tenant URLs: ``TenantURLs`` as an ``EngineRegistry``'s ``url_for``, and its errors."""

from __future__ import annotations

import re
from typing import assert_type

from sqlalchemy import URL

from async_scoped_session_ext import EngineRegistry
from async_scoped_session_ext.tenants import (
    DEFAULT_PATTERN,
    InvalidTenantKey,
    TenantURLs,
    tenant_url,
)


def tenant_urls() -> None:
    """A template with ``{key}``, or ``database=`` as a string, a mapping or a function."""
    urls = TenantURLs("postgresql+asyncpg://app@db/tenant_{key}")
    assert_type(urls("acme"), URL)
    assert_type(urls.is_valid("acme"), bool)
    assert_type(urls.template, URL)
    assert_type(urls.pattern, re.Pattern[str])
    EngineRegistry(urls, is_async=True)
    TenantURLs(URL.create("sqlite", database="data"), database="{key}.db", pattern=r"[a-z]+")
    TenantURLs("postgresql://app@db", database={"acme": "acme_prod"})
    TenantURLs("postgresql://app@db", database=lambda key: None if key == "x" else key)
    TenantURLs("postgresql://app@db", database=lambda key: 1)  # type: ignore[arg-type]
    assert_type(tenant_url("sqlite:///data/{key}.db", "acme"), URL)
    assert_type(DEFAULT_PATTERN, re.Pattern[str])
    try:
        urls("adv?host=127.0.0.1:5441")
    except InvalidTenantKey as error:
        assert_type(error, InvalidTenantKey)
        assert isinstance(error, ValueError)
