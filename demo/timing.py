"""Measure the app as a visitor meets it: seconds from pressing Run to the first dream tile, to the
finished showcase (every tile at its last step) and to the end of the run.

Starts the real app (``python demo/app.py``, in a process of its own) on a free local port, presses
Run through ``gradio_client`` with the quick
budget (or another) and reports the times and the final accuracies. Example, on a CPU::

    python demo/timing.py --teacher akamaster/resnet20 --data cifar10

The app's start-up (first-use downloads, decoding the evaluation data) finishes before the clock
starts, so the numbers are those of a warm app.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # started as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.runner import teacher_option
from demo.settings import BUDGETS, default_values
from demo.views import output_index
from dfkd_core.device import usable_cpus


def _is_update(value: object) -> bool:
    """Whether an output of one streamed step carries a new value (not a skip, not an empty reset)."""
    return bool(value) and not (isinstance(value, dict) and value.get("__type__") == "update")


def _finished(tiles: list[dict[str, Any]]) -> bool:
    """Whether every showcase tile is at its last step (captions end in ``N/N``)."""
    steps = [tile["caption"].rsplit(" ", 1)[-1].split("/") for tile in tiles]
    return all(len(s) == 2 and s[0] == s[1] for s in steps)


def _last(outputs: list[Any], name: str) -> Any:
    """The last new value output ``name`` took over a job's streamed steps."""
    index = output_index(name)
    return next(out[index] for out in reversed(outputs) if _is_update(out[index]))


def _finished_run(outputs: list[Any], total: float) -> dict[str, Any]:
    """Device, total and per-stage seconds and the final accuracies of a finished run."""
    files = [f["path"] if isinstance(f, dict) else f for f in _last(outputs, "files")]  # the server's copies
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
    parser.add_argument("--showcase-only", action="store_true", help="press Stop once the showcase has formed")
    return parser


def _serve(args: argparse.Namespace, local: tuple[Path, ...], port: int) -> subprocess.Popen:
    """``python demo/app.py`` in a process of its own, as a Space runs it: the measuring client shares no CPU
    time slice and no interpreter lock with the server."""
    command = [sys.executable, str(Path(__file__).with_name("app.py")), "--port", str(port), "--data", args.data]
    command += ["--device", args.device] + [f"--teacher-dir={path}" for path in local]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _connect(url: str, server: subprocess.Popen, seconds: float = 120) -> Any:
    """A client of the app at ``url`` once it serves and its start-up has finished (not part of the measure)."""
    from gradio_client import Client

    deadline = time.monotonic() + seconds
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the app exited: {server.stderr.read() if server.stderr else ''}")
        try:
            client = Client(url, verbose=False, download_files=False)  # keeps up with the stream, as a page does
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    while (status := client.predict(api_name="/startup")[0]).startswith("Getting ready:"):
        time.sleep(1)
    if status:
        raise SystemExit(f"the app could not start: {status}")
    return client


def main(argv: list[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    local, teacher = teacher_option(args.teacher)
    values = {**default_values(args.budget, teacher), "sparsity": args.sparsity}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _serve(args, local, port)
    try:
        client = _connect(f"http://127.0.0.1:{port}/", server)
        started = time.perf_counter()
        job = client.submit(**values, api_name="/run")  # /run names its parameters after the controls
        first_tile = showcase = None
        seen, dreams = 0, output_index("dreams")
        while not job.done():
            outputs = job.outputs()
            for out in outputs[seen:]:
                if _is_update(out[dreams]):
                    now = time.perf_counter() - started
                    first_tile = first_tile or now
                    if showcase is None and _finished(out[dreams]):
                        showcase = now
                        if args.showcase_only:
                            client.predict(api_name="/stop")
            seen = len(outputs)
            time.sleep(0.05)
        total = time.perf_counter() - started
        job.result()
        record: dict[str, Any] = {
            "teacher": teacher,
            "budget": args.budget,
            "threads": usable_cpus(),
            "first_tile_s": None if first_tile is None else round(first_tile, 2),
            "showcase_s": None if showcase is None else round(showcase, 2),
        }
        if not args.showcase_only:  # read while the app (and its session's files) still exist
            record |= _finished_run(job.outputs(), total)
        client.close()
    finally:
        server.terminate()
        server.wait(30)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
