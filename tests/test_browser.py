"""A real browser on the app: headless Chromium (Debian's ``chromium`` package) driven by Playwright.

It loads the page, sets the controls, presses Run, waits for the first dream image, saves a
screenshot as a test artifact (in ``$DFKD_TEST_ARTIFACTS`` when set, else the test's tmp
folder), then presses Stop and sees the page say so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from demo.screenshot import CHROMIUM_ARGS
from demo.settings import BUDGETS, CONTROLS

from .test_demo import STAGE_COUNT, served, tiny_options

CHROMIUM = Path(os.environ.get("DFKD_CHROMIUM", "/usr/bin/chromium"))
ID = {control.name: f"#{control.elem_id}" for control in CONTROLS}  # the controls' HTML ids, from the table


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.is_file():
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set DFKD_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI installs it in .ci/run")
        pytest.skip(message)
    return CHROMIUM


def test_page_runs_shows_dreams_and_stops(chromium, teacher_checkpoint, image_root, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    artifacts = Path(os.environ.get("DFKD_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    with served(tiny_options((teacher_checkpoint,), image_root)) as client, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(client.src)
            expect(page.get_by_text("Give a pruned network its accuracy back")).to_be_visible(timeout=30_000)

            sparsity = page.locator(f"{ID['sparsity']} input[type=number]")
            sparsity.fill("0.6")
            sparsity.press("Enter")
            page.locator(ID["budget"]).get_by_label(BUDGETS["quick"].label).check()
            page.get_by_text("Advanced: the recipe").click()
            page.locator(f"{ID['num_images']} input").fill("30")
            page.locator(f"{ID['steps']} input").fill("5000")  # long enough to press Stop mid-run
            page.locator(f"{ID['epochs']} input").fill("1")
            page.locator("#run").click()

            first_dream = page.locator("#dreams img").first
            expect(first_dream).to_be_visible(timeout=60_000)
            expect(page.locator("#dreams")).to_contain_text("airplane")
            expect(page.locator("#status")).to_contain_text(f"Stage 3 of {STAGE_COUNT}")
            expect(page.locator("#run")).to_be_disabled()
            shot = page.screenshot(path=str(artifacts / "app-first-dreams.png"), full_page=True)
            assert len(shot) > 10_000

            page.locator("#stop").click()
            expect(page.locator("#status")).to_contain_text("Stopped", timeout=10_000)
            expect(page.locator("#run")).to_be_enabled()
            assert sparsity.input_value() == "0.6"
        finally:
            browser.close()
    print(f"screenshot: {artifacts / 'app-first-dreams.png'}")
