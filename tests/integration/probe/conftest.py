from tests.support.db import db_url, migrated_engine  # noqa: F401
from tests.support.openbao import openbao, openbao_fresh  # noqa: F401
