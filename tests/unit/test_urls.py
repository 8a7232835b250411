"""One display rule for every URL keyd shows or stores (keyd.urls.display_url)."""

from __future__ import annotations

import pytest

from keyd.urls import display_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/…"),
        ("https://example.org/hook?token=s3cret", "https://example.org/…"),
        ("https://example.org?token=s3cret", "https://example.org/…"),
        ("https://user:pw@example.org:8443/", "https://user:***@example.org:8443/"),
        ("https://idp.example.org", "https://idp.example.org"),
        ("http://[::1]:8200", "http://[::1]:8200"),
        (
            "postgresql+psycopg://keyd:hunter2@db:5432/keyd?sslmode=require",
            "postgresql+psycopg://keyd:***@db:5432/keyd?…",
        ),
        ("sqlite:////var/lib/keyd/keyd.db", "sqlite:////var/lib/keyd/keyd.db"),
        ("not a url", "<unparsable URL>"),
        ("http://host:99999/x", "<unparsable URL>"),
    ],
)
def test_display_url(url: str, shown: str) -> None:
    assert display_url(url) == shown
    assert "s3cret" not in display_url(url) and "hunter2" not in display_url(url)
