"""Rotation tests use real files, a real OpenBao, PostgreSQL and SQLite."""

from tests.support.db import db_engine, db_url, migrated_engine  # noqa: F401
from tests.support.openbao import kv_prefix, openbao  # noqa: F401
