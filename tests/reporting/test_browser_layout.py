"""Reviewer's checks of the report in headless Chromium at 1280 px and at 390 px (a phone).

Full-page screenshots at both widths go to ``test-output/`` (``report-1280.png``,
``report-390.png``). At 1280 px no table may be wider than the text column (no horizontal
scrolling) and the page itself must not scroll sideways. Every figure needs alt text and
every table a caption. Without Chromium or playwright the test is skipped locally and fails
in CI (as ``test_browser.py``), so CI cannot pass without having looked.
"""

from __future__ import annotations

import pytest
from report_fixtures import REPO, shared_outputs
from test_browser import CHROMIUM_FLAGS, browser_or_skip

pytestmark = pytest.mark.browser

WIDTHS = (1280, 390)
# Layout facts measured in the page: images, tables (with their caption and widths).
MEASURE = """() => ({
  page: document.documentElement.scrollWidth,
  images: Array.from(document.images).map(i => ({alt: i.alt.trim(), complete: i.complete,
                                                 width: i.naturalWidth})),
  tables: Array.from(document.querySelectorAll('table')).map(t => ({
    caption: t.caption ? t.caption.textContent.trim() : '',
    width: Math.ceil(t.getBoundingClientRect().width),
    scroll: t.scrollWidth,
    column: t.parentElement.clientWidth,
  })),
})"""


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return shared_outputs(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def measured(run, tmp_path_factory):
    executable, sync_playwright = browser_or_skip()
    output = REPO / "test-output"
    output.mkdir(exist_ok=True)
    facts = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path_factory.mktemp("profile")), executable_path=executable,
            headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 900})
                page.goto(run.report.resolve().as_uri(), wait_until="load")
                shot = output / f"report-{width}.png"
                page.screenshot(path=str(shot), full_page=True)
                facts[width] = {**page.evaluate(MEASURE), "screenshot": shot}
        finally:
            browser.close()
    return facts


@pytest.mark.parametrize("width", WIDTHS)
def test_full_page_screenshot(measured, width):
    shot = measured[width]["screenshot"]
    assert shot.stat().st_size > 50_000
    from PIL import Image

    with Image.open(shot) as image:
        # device pixels may be scaled, the ratio of width to viewport is not
        assert image.size[1] > 3 * image.size[0]  # the whole page, not one screen
        assert image.size[0] in (width, 2 * width)  # nothing scrolls the page sideways


def test_every_figure_has_alt_text(measured):
    images = measured[1280]["images"]
    assert len(images) >= 5
    for image in images:
        assert image["complete"] and image["width"] > 0, image
        assert len(image["alt"]) >= 10, image


def test_every_table_has_a_caption(measured):
    tables = measured[1280]["tables"]
    assert len(tables) >= 10
    missing = [i for i, t in enumerate(tables) if len(t["caption"]) < 10]
    assert not missing, f"tables without a caption: {missing}"


def test_the_phone_layout_does_not_scroll_sideways(measured):
    assert measured[390]["page"] <= 390


def test_tables_fit_1280_px_without_horizontal_scrolling(measured):
    facts = measured[1280]
    too_wide = [(t["caption"][:60], t["scroll"], t["column"]) for t in facts["tables"]
                if t["scroll"] > t["column"] + 1 or t["width"] > t["column"] + 1]
    assert not too_wide, f"tables wider than the text column: {too_wide}"
    assert facts["page"] <= 1280
