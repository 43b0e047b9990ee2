"""Two jobs on the same cores: how much a second dfkd process slows the first, by how OpenMP threads wait.

A laptop running a notebook beside the command line, or a Space running the app beside another job, puts two
processes on the same few cores. Each job here is one distillation epoch of a pruned ResNet-20 (1,024 images in
batches of 32, the default recipe's epoch), timed alone and then with a twin started at the same moment, each
with as many threads as there are usable cores. OpenMP threads that finish their share of a parallel region wait
for the others; ``OMP_WAIT_POLICY=ACTIVE`` waits by spinning (a core's worth of work stolen from the other job),
``PASSIVE`` by sleeping. The policy must be set before torch starts, so every job is a process of its own:

    python benchmarks/shared_cores.py --teacher ../shared/weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt

Writes ``benchmarks/results/shared_cores.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WAITS = {  # how OpenMP threads wait: the environment each job starts with
    "unset": {},  # OpenMP's own default: spin a while (GOMP_SPINCOUNT 300,000), then sleep
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},  # spin
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},  # sleep at once
    "spin 10,000": {"GOMP_SPINCOUNT": "10000"},  # spin a thirtieth of the default, then sleep
    "spin 1,000": {"GOMP_SPINCOUNT": "1000"},
}
ROUNDS = 3  # each measurement is the median of this many
EPOCH_IMAGES = 1024  # one epoch of the default recipe's transfer set
WARMUP_IMAGES = 64  # an untimed epoch on these first: allocator and thread pool warmed up


def job(teacher: str) -> float:
    """One distillation epoch on random pixels; its steps per second."""
    import torch

    import dfkd_core as dfkd

    dfkd.limit_threads()
    loaded = dfkd.load_teacher(teacher)
    student = dfkd.prune_model(loaded.model, 0.75)
    images = torch.rand(EPOCH_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    config = dfkd.DistillConfig(epochs=1, lr=0.01)
    dfkd.distill(student, loaded.model, images[:WARMUP_IMAGES], loaded.normalization, config)
    started = time.perf_counter()
    dfkd.distill(student, loaded.model, images, loaded.normalization, config)
    return (EPOCH_IMAGES // config.batch_size) / (time.perf_counter() - started)


def _launch(teacher: str, wait: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(WAITS[wait])
    return subprocess.Popen(
        [sys.executable, __file__, "--job", "--teacher", teacher], env=env, stdout=subprocess.PIPE, text=True
    )


def measure(teacher: str, wait: str, together: int) -> list[float]:
    """Steps per second of each of ``together`` jobs started at once with ``wait``."""
    jobs = [_launch(teacher, wait) for _ in range(together)]
    return [float(j.communicate()[0].strip().splitlines()[-1]) for j in jobs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--job", action="store_true", help=argparse.SUPPRESS)  # one timed job (internal)
    args = parser.parse_args(argv)
    if args.job:
        print(job(args.teacher), flush=True)
        return 0
    rows = []
    for wait in WAITS:
        alone = sorted(measure(args.teacher, wait, 1)[0] for _ in range(ROUNDS))[ROUNDS // 2]
        pairs = [measure(args.teacher, wait, 2) for _ in range(ROUNDS)]
        beside = sorted(min(pair) for pair in pairs)[ROUNDS // 2]  # the slower of the two: what a user waits for
        rows.append(
            {
                "wait": wait,
                "environment": WAITS[wait],
                "alone_steps_s": round(alone, 2),
                "beside_steps_s": round(beside, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    command = "python benchmarks/shared_cores.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {"command": command.strip(), "cores": os.cpu_count(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shared_cores.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        "| OpenMP threads wait | alone, steps/s | beside a twin, steps/s (the slower) | slow-down |",
        "|---|---|---|---|",
        *(
            f"| {r['wait']} | {r['alone_steps_s']} | {r['beside_steps_s']} | "
            f"{r['alone_steps_s'] / r['beside_steps_s']:.1f}x |"
            for r in rows
        ),
    ]
    (args.out / "shared_cores.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
