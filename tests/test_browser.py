"""A real browser on the app: headless Chromium (Debian's ``chromium`` package) driven by Playwright.

It opens the page on the stored example, runs the real ResNet-20 teacher on a slice of the JPEG
test split, watches the showcase dreams form to their last step within the time the README
states for a CPU, saves a screenshot as a test artifact (in ``$DFKD_TEST_ARTIFACTS`` when set,
else the test's tmp folder), presses Stop and sees the run really end. A second test opens the
page while a start-up download is held back.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from demo.app import serve_locally
from demo.runner import SHOWCASE_CPU_SECONDS
from demo.screenshot import CHROMIUM_ARGS
from demo.settings import BUDGETS, CONTROLS
from demo.startup import Preparation, Step

from .conftest import shared_asset
from .test_demo import STAGE_COUNT, jpeg_slice, tiny_options

CHROMIUM = Path(os.environ.get("DFKD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
ID = {control.name: f"#{control.elem_id}" for control in CONTROLS}  # the controls' HTML ids, from the table
SERVER_PATHS = re.compile(r"(?<![\w:/.])/(?:tmp|work|root|home|usr|var|data)/")  # no server path on the page


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.is_file():
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set DFKD_CHROMIUM)"
        if os.environ.get("DFKD_REQUIRE_ASSETS") == "1" or os.environ.get("CI"):
            pytest.fail(message + "; CI installs it in .ci/run")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _captions(page) -> list[str]:
    return page.locator("#dreams .caption-label").all_inner_texts()


@pytest.mark.slow
@pytest.mark.assets
def test_example_on_load_then_the_showcase_forms_and_stop_ends_the_run(browser, tmp_path):
    from playwright.sync_api import expect

    artifacts = Path(os.environ.get("DFKD_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    teacher = shared_asset("weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt").resolve()
    data = jpeg_slice(tmp_path / "slice", per_class=30)
    with serve_locally(tiny_options((teacher,), data)) as app:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app.local_url)
        status, dreams = page.locator("#status"), page.locator("#dreams")
        expect(status).to_contain_text("Stored example", timeout=30_000)
        expect(dreams.locator("img").first).to_be_visible()
        assert all(c.endswith("200/200") for c in _captions(page)), "the example shows formed dreams"
        assert not SERVER_PATHS.search(page.inner_text("body")), "no server path on the page"

        sparsity = page.locator(f"{ID['sparsity']} input[type=number]")
        sparsity.fill("0.6")
        sparsity.press("Enter")
        page.locator(ID["budget"]).get_by_label(BUDGETS["quick"].label).check()
        page.get_by_text("Advanced: the recipe").click()
        # the budget fills in its recipe in its own request: typing before it answers would be overwritten
        expect(page.locator(f"{ID['steps']} input")).to_have_value(str(BUDGETS["quick"].recipe.dream.steps))
        page.locator(f"{ID['num_images']} input").fill("30")
        page.locator(f"{ID['steps']} input").fill("2000")  # the most the page allows: long enough to press Stop mid-run
        page.locator(f"{ID['epochs']} input").fill("1")
        app.deployment.preparation.wait()
        pressed = time.monotonic()
        page.locator("#run").click()

        expect(status).to_contain_text(f"Stage 3 of {STAGE_COUNT}", timeout=30_000)  # the showcase
        expect(dreams).to_contain_text("/200", timeout=30_000)
        first = _captions(page)
        expect(dreams).not_to_contain_text(first[0], timeout=30_000)  # the tiles change as the dreams form
        expect(dreams).to_contain_text("airplane · 200/200", timeout=SHOWCASE_CPU_SECONDS * 1000)
        formed = time.monotonic() - pressed
        assert formed < SHOWCASE_CPU_SECONDS, f"the showcase formed after {formed:.1f} s"
        expect(status).to_contain_text(f"Stage 4 of {STAGE_COUNT}", timeout=30_000)  # dreaming the transfer set
        expect(page.locator("#run")).to_be_disabled()
        shot = page.screenshot(path=str(artifacts / "app-showcase.png"), full_page=True)
        assert len(shot) > 10_000
        assert not SERVER_PATHS.search(page.inner_text("body")), "no server path on the page during a run"

        page.locator("#stop").click()
        expect(status).to_contain_text("Stopped", timeout=10_000)
        expect(status).to_contain_text("took", timeout=10_000)  # the run's own last word: it has ended
        expect(page.locator("#run")).to_be_enabled()
        ended = status.inner_text(), _captions(page)
        time.sleep(3)
        assert (status.inner_text(), _captions(page)) == ended, "nothing changes after Stop: the run has ended"
        assert sparsity.input_value() == "0.6"
    print(f"screenshot: {artifacts / 'app-showcase.png'} (showcase formed {formed:.1f} s after Run)")


@pytest.mark.slow
def test_the_page_shows_the_start_up_while_it_downloads(browser, teacher_checkpoint, image_root):
    from playwright.sync_api import expect

    release = threading.Event()
    slow = Preparation(
        [Step("downloading CIFAR-10's test split (first start only)", release.wait, lambda: "42 of 170 MB")]
    )
    launched = time.monotonic()
    with serve_locally(tiny_options((teacher_checkpoint,), image_root), slow) as app:
        page = browser.new_page()
        page.goto(app.local_url)
        startup = page.locator("#startup")
        expect(startup).to_contain_text("Getting ready: downloading CIFAR-10's test split", timeout=30_000)
        assert time.monotonic() - launched < 30, "the page is served while the start-up downloads"
        expect(startup).to_contain_text("42 of 170 MB")
        release.set()
        expect(startup).not_to_contain_text("Getting ready", timeout=10_000)
