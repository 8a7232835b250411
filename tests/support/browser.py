"""Debian's headless Chromium, driven through ``chromedriver`` with a small
W3C WebDriver client over httpx.

Why not selenium: the tests need five commands (new session, navigate,
execute script, screenshot, delete session); the W3C protocol is plain
JSON over HTTP and httpx is already a dependency, so a page of code here
replaces a package and its pinned driver manager. ``chromium`` and
``chromium-driver`` come from Debian (same version, so they always
match); ``make test`` installs them when missing. A missing binary fails
the test, it is never skipped.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.daemon import free_port

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1600",
]


class WebDriverError(AssertionError):
    pass


class Browser:
    """One Chromium session; ``close()`` ends it and its chromedriver."""

    def __init__(self, workdir: Path) -> None:
        driver = shutil.which("chromedriver")
        if driver is None or not Path(CHROMIUM).exists():
            raise AssertionError(
                "chromium/chromedriver missing: run `make services` "
                "(apt-get install chromium chromium-driver)"
            )
        port = free_port()
        self._log = (workdir / "chromedriver.log").open("wb")
        self._proc = subprocess.Popen([driver, f"--port={port}"], stdout=self._log, stderr=subprocess.STDOUT)
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        self._wait_ready()
        profile = workdir / "chromium-profile"
        profile.mkdir()
        caps = {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={profile}"]},
        }
        value = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        self._session = f"/session/{value['sessionId']}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self._http.get("/status").json()["value"]["ready"]:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise AssertionError("chromedriver did not become ready within 30 s")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        value = response.json().get("value")
        if response.status_code != 200:
            raise WebDriverError(f"{method} {path}: {response.status_code} {value}")
        return value

    def get(self, url: str) -> None:
        self._call("POST", f"{self._session}/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments`` holds ``args``)."""
        return self._call("POST", f"{self._session}/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", f"{self._session}/screenshot")))
        return path

    def close(self) -> None:
        try:
            if hasattr(self, "_session"):
                self._call("DELETE", self._session)
        finally:
            self._http.close()
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._log.close()
