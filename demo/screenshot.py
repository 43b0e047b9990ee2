"""Take the README's picture of the app: the whole page after a finished run, as a PNG.

Starts the real app on a free local port (as ``demo/timing.py`` does), drives it with headless
Chromium through Playwright (Debian's ``chromium`` package; no browser download), picks the
teacher, the sparsity and the budget, presses Run, waits until the status says Done and saves
a full-page screenshot. A quick run takes about 6 minutes on a 2-core CPU. With ``--example`` it
takes the page as it opens instead: the stored example, a full Default run (:mod:`demo.example`).
Example::

    python demo/screenshot.py --data ../shared/data/cifar10-jpeg \
        --teacher ../shared/weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playwright.sync_api import Page, expect, sync_playwright

from demo.app import AppOptions, serve_locally
from demo.runner import teacher_choices, teacher_option
from demo.settings import BUDGETS, CONTROLS

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ID = {control.name: f"#{control.elem_id}" for control in CONTROLS}  # the controls' HTML ids
FINISHED = re.compile(r"^\s*(Done|Failed|Stopped)")  # the status headings that end a run (text starts with one)


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="akamaster/resnet20", help="registry id or checkpoint path")
    parser.add_argument("--data", default="cifar10", help="evaluation data: 'cifar10' or an ImageFolder root")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="quick")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("docs/images/app.png"))
    parser.add_argument("--timeout", type=float, default=30, help="minutes to wait for the run to finish")
    parser.add_argument("--example", action="store_true", help="the page as it opens, on the stored example; no run")
    parser.add_argument(
        "--chromium",
        default=os.environ.get("DFKD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium",
        help="the Chromium executable (env DFKD_CHROMIUM; default: chromium on the PATH)",
    )
    return parser


def choose(page: Page, teacher_label: str, sparsity: float, budget_label: str) -> None:
    """Set the teacher, the sparsity and the budget the way a user does."""
    page.locator(f"{ID['teacher']} input").click()
    page.get_by_role("option", name=teacher_label, exact=True).click()
    expect(page.get_by_role("listbox")).to_be_hidden()
    sparsity_box = page.locator(f"{ID['sparsity']} input[type=number]")
    sparsity_box.fill(str(sparsity))
    sparsity_box.press("Enter")
    page.locator(ID["budget"]).get_by_label(budget_label, exact=True).check()


def run_and_wait(page: Page, minutes: float) -> str:
    """Press Run and wait until the run ends; returns the status text (it starts with Done on success)."""
    status = page.locator("#status")
    page.locator("#run").click()
    expect(page.locator("#run")).to_be_disabled(timeout=30_000)  # the run has started
    expect(status).to_contain_text(FINISHED, timeout=minutes * 60_000)
    expect(page.locator("#run")).to_be_enabled(timeout=30_000)  # the last update has arrived
    page.wait_for_function("() => [...document.images].every(image => image.complete)")  # plots drawn
    return status.inner_text()


def main(argv: list[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    local, teacher = teacher_option(args.teacher)
    label = next(label for label, value in teacher_choices(local) if value == teacher)
    options = AppOptions(data=args.data, teachers=local, device=args.device)
    with serve_locally(options) as app, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            app.deployment.preparation.wait()  # first-use downloads are not part of what is measured
            page.goto(app.local_url)
            expect(page.get_by_text("Give a pruned network its accuracy back")).to_be_visible(timeout=60_000)
            if args.example:
                expect(page.locator("#status")).to_contain_text("Stored example")
                page.wait_for_function("() => [...document.images].every(image => image.complete)")
            else:
                choose(page, label, args.sparsity, BUDGETS[args.budget].label)
                status = run_and_wait(page, args.timeout)
                if not status.lstrip().startswith("Done"):
                    print(f"the run did not finish: {status}", file=sys.stderr)
                    return 1
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
        finally:
            browser.close()
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
