"""A headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium, for the
tests of pages people look at. Without the browser the tests are skipped, unless
``TBPS_BENCH_REQUIRE_BROWSER`` is set (CI sets it, so there they fail instead)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest


def chromium():
    """A started headless Chromium, logging the console and the network."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        if os.environ.get("TBPS_BENCH_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
        pytest.skip("no chromium / chromedriver on this machine")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,2000",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def network_requests(browser) -> list[str]:
    """URLs the page requested since the last call (file:// included)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def console_errors(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def open_page(browser, page: Path) -> None:
    browser.get(page.resolve().as_uri())


def distinct_colours(png: bytes) -> int:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(png)) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])
