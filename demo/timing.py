"""Measure the app as a user meets it: seconds from pressing Run to the first dream grid, and to the end.

Starts the real app on a free local port, presses Run through ``gradio_client`` with the Quick
budget (or another) and reports both times and the final accuracies. Example, on a CPU::

    python demo/timing.py --teacher akamaster/resnet20 --data cifar10

The evaluation data is loaded once before the clock starts, as ``python demo/app.py`` does
at launch, so the numbers are those of a warm app, not of a first download.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # started as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from demo.app import AppOptions, create_app, knob_values, warm_up
from demo.runner import BUDGETS, find_local_teachers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_update(value: object) -> bool:
    """Whether an output of one streamed step carries a new value (not a skip, not an empty reset)."""
    return bool(value) and not (isinstance(value, dict) and value.get("__type__") == "update")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="akamaster/resnet20", help="registry id or checkpoint path")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="Quick")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--first-grid-only", action="store_true", help="press Stop once the first dreams show")
    args = parser.parse_args(argv)
    from gradio_client import Client

    local = tuple(find_local_teachers([args.teacher])) if Path(args.teacher).is_file() else ()
    teacher = str(local[0]) if local else args.teacher
    options = AppOptions(data=args.data, teachers=local, device=args.device)
    warm_up(options.data)
    port = _free_port()
    app = create_app(options)
    app.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        started = time.perf_counter()
        job = client.submit(teacher, args.sparsity, args.budget, *knob_values(args.budget), 0, api_name="/run")
        first_grid = None
        while not job.done():
            if first_grid is None and any(_is_update(out[1]) for out in job.outputs()):
                first_grid = time.perf_counter() - started
                if args.first_grid_only:
                    client.predict(api_name="/stop")
            time.sleep(0.05)
        total = time.perf_counter() - started
        job.result()
        if args.first_grid_only:
            print(json.dumps({"teacher": teacher, "budget": args.budget, "threads": torch.get_num_threads(),
                              "first_dream_grid_s": round(first_grid, 2)}, indent=2))  # fmt: skip
            return 0
        table = next(out[6] for out in reversed(job.outputs()) if _is_update(out[6]))
        files = next(out[7] for out in reversed(job.outputs()) if _is_update(out[7]))
        report = json.loads(next(Path(f) for f in files if f.endswith("report.json")).read_text())
    finally:
        app.close()
    record = {
        "teacher": teacher, "budget": args.budget, "device": report["device"], "threads": torch.get_num_threads(),
        "first_dream_grid_s": None if first_grid is None else round(first_grid, 2), "total_s": round(total, 1),
        "stages_s": report["timings_s"], "accuracy": {row[0]: row[1] for row in table["data"]},
    }  # fmt: skip
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
