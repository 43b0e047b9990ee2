"""Measure the app as a user meets it: seconds from pressing Run to the first dream grid, and to the end.

Starts the real app on a free local port, presses Run through ``gradio_client`` with the quick
budget (or another) and reports both times and the final accuracies. Example, on a CPU::

    python demo/timing.py --teacher akamaster/resnet20 --data cifar10

The evaluation data is loaded once before the clock starts, as ``python demo/app.py`` does
at launch, so the numbers are those of a warm app, not of a first download.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # started as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from demo.app import AppOptions, serve_locally, warm_up
from demo.runner import teacher_option
from demo.settings import BUDGETS, default_values
from demo.views import output_index


def _is_update(value: object) -> bool:
    """Whether an output of one streamed step carries a new value (not a skip, not an empty reset)."""
    return bool(value) and not (isinstance(value, dict) and value.get("__type__") == "update")


def _last(outputs: list[Any], name: str) -> Any:
    """The last new value output ``name`` took over a job's streamed steps."""
    index = output_index(name)
    return next(out[index] for out in reversed(outputs) if _is_update(out[index]))


def _finished_run(outputs: list[Any], total: float) -> dict[str, Any]:
    """Device, total and per-stage seconds and the final accuracies of a finished run."""
    files = _last(outputs, "files")
    report = json.loads(next(Path(f) for f in files if f.endswith("report.json")).read_text())
    return {
        "device": report["device"],
        "total_s": round(total, 1),
        "stages_s": report["timings_s"],
        "accuracy": {row[0]: row[1] for row in _last(outputs, "summary")["data"]},
    }


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="akamaster/resnet20", help="registry id or checkpoint path")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="quick")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--first-grid-only", action="store_true", help="press Stop once the first dreams show")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    from gradio_client import Client

    local, teacher = teacher_option(args.teacher)
    options = AppOptions(data=args.data, teachers=local, device=args.device)
    values = {**default_values(args.budget, teacher), "sparsity": args.sparsity}
    warm_up(options.data)
    with serve_locally(options) as url:
        client = Client(url, verbose=False)
        started = time.perf_counter()
        job = client.submit(**values, api_name="/run")  # /run names its parameters after the controls
        first_grid = None
        dreams = output_index("dreams")
        while not job.done():
            if first_grid is None and any(_is_update(out[dreams]) for out in job.outputs()):
                first_grid = time.perf_counter() - started
                if args.first_grid_only:
                    client.predict(api_name="/stop")
            time.sleep(0.05)
        total = time.perf_counter() - started
        job.result()
        record: dict[str, Any] = {
            "teacher": teacher,
            "budget": args.budget,
            "threads": torch.get_num_threads(),
            "first_dream_grid_s": None if first_grid is None else round(first_grid, 2),
        }
        if not args.first_grid_only:  # read while the app (and its session's files) still exist
            record |= _finished_run(job.outputs(), total)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
