from tests.support.db import db_engine, db_url, migrated_engine  # noqa: F401
