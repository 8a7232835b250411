from tests.support.issuer_fixtures import client, clock  # noqa: F401
