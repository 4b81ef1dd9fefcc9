"""Render the report in headless Debian Chromium: every image loads, the console stays clean.

Drives the system Chromium (``/usr/bin/chromium``, Debian package ``chromium``) through the
Python ``playwright`` package with ``executable_path``; no browser is downloaded. Without
Chromium or playwright the test is skipped locally but fails when ``CI`` is set, so CI cannot
pass silently without having looked at the report. A screenshot is kept under
``test-output/``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from report_fixtures import REPO, shared_outputs

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    """The system Chromium binary, or None."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI: apt-get install chromium; pip install .[test])")
    pytest.skip(reason)


def browser_or_skip():
    """(Chromium's path, playwright's ``sync_playwright``), or skip (fail in CI) without."""
    executable = chromium_path()
    if executable is None:
        unavailable("Chromium not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed")
    return executable, sync_playwright


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return shared_outputs(tmp_path_factory.getbasetemp())


def test_report_renders_in_chromium(run, tmp_path):
    executable, sync_playwright = browser_or_skip()

    console: list[str] = []
    failed_requests: list[str] = []
    output = REPO / "test-output"
    output.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "profile"), executable_path=executable,
            headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1200, "height": 900},
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: failed_requests.append(r.url[:80]))
            page.goto(run.report.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,"
                " width: i.naturalWidth, height: i.naturalHeight}))"
            )
            external = page.evaluate(
                "performance.getEntriesByType('resource').map(r => r.name)"
                ".filter(n => !n.startsWith('data:') && !n.startsWith('file:'))"
            )
            page.screenshot(path=str(output / "report.png"), full_page=True)
        finally:
            browser.close()

    assert len(images) == 5
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    errors = [line for line in console if line.startswith(("error", "pageerror"))]
    assert not errors, errors
    assert not failed_requests, failed_requests
    assert not external, external
    assert (output / "report.png").stat().st_size > 10_000
