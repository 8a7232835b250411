"""View tests run on SQLite and PostgreSQL (tests/support/db.py)."""

from tests.support.db import db_engine, db_url, migrated_engine  # noqa: F401
