from tests.support.db import db_engine, db_url, migrated_engine  # noqa: F401
from tests.support.issuer_fixtures import clock  # noqa: F401
from tests.support.zitadel_world import zitadel_world  # noqa: F401
