"""Channel speed: how fast a slimmer ResNet-56 runs on this CPU, and how much that figure moves between runs.

Speed depends on the shapes a pruning leaves, not on the values of the weights, so no recovery is needed:
the JPEG ResNet-56 teacher is cut to each share of MACs removed in three ways, and each network is timed
against the dense teacher by the library's :func:`dfkd_core.evaluate.measure_latency` (CPU, channels_last,
inference mode, the models taking turns, median of 7 rounds). That measurement is repeated ``--passes``
times, so the table shows the spread a single figure hides.

    one cut, global       Torch-Pruning's global group-L1 ranking, in one cut (``--distill-gradual-epochs 0``)
    one cut, layer-wise   the same share of channels from every block (``--scope layerwise``)
    gradual, global       the cuts of the default channel recipe (from 20% of the MACs removed, 25 steps on the
                          cubic schedule), applied to the teacher's weights without training in between

Usage (from the repository root; writes channel_speed.json and channel_speed.md):

    python benchmarks/channel_speed.py --shared ../shared --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
from recovery import machine  # benchmarks/recovery.py: run as `python benchmarks/<script>.py`
from tables import write_study

import dfkd_core as dfkd
from dfkd_core.channels import count_macs, prune_channels
from dfkd_core.evaluate import measure_latency
from dfkd_core.pipeline import CHANNEL_GRADUAL_START

TEACHER = "weights/cifar10-jpeg-teachers/resnet56-4bfd9763-jpeg.pt"  # inside shared/
GRADUAL_STEPS = 25  # the default channel recipe's cuts: 5/6 of 30 epochs
BATCHES = (256, 1)


def _gradual(model: torch.nn.Module, sparsity: float, dense_macs: int) -> torch.nn.Module:
    schedule = dfkd.GradualPruning(
        target=sparsity, start=CHANNEL_GRADUAL_START, epochs=GRADUAL_STEPS, granularity="channel", dense_macs=dense_macs
    )
    model = prune_channels(model, schedule.first)
    for epoch in range(1, GRADUAL_STEPS + 2):
        schedule.step(model, epoch)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75])
    parser.add_argument("--passes", type=int, default=3, help="independent latency measurements per network")
    args = parser.parse_args(argv)
    command = "python " + " ".join(["benchmarks/channel_speed.py", *(argv if argv is not None else sys.argv[1:])])
    teacher = dfkd.load_teacher(str(args.shared / TEACHER)).model.eval()
    dense_macs = count_macs(teacher)
    networks = {"dense": teacher}
    for sparsity in args.sparsities:
        networks[f"{sparsity:.0%} one cut, global"] = prune_channels(teacher, sparsity, "global")
        networks[f"{sparsity:.0%} one cut, layer-wise"] = prune_channels(teacher, sparsity, "layerwise")
        networks[f"{sparsity:.0%} gradual, global"] = _gradual(teacher, sparsity, dense_macs)
    passes = [measure_latency(networks, batch_sizes=BATCHES) for _ in range(args.passes)]
    rows = []
    for name, network in networks.items():
        speedups = {b: [p["dense"][b] / p[name][b] for p in passes] for b in BATCHES}
        rows.append(
            {
                "network": name,
                "macs": count_macs(network),
                "params": sum(p.numel() for p in network.parameters()),
                "dense_ms": {b: [round(p["dense"][b], 2) for p in passes] for b in BATCHES},
                "speedups": {b: [round(s, 3) for s in speedups[b]] for b in BATCHES},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        f"ResNet-56 JPEG teacher, channels removed to a share of MACs; {machine()}; {args.passes} passes; `{command}`",
        "",
        "| network | MACs | params | speed-up batch 256: median (min-max) | batch 1: median (min-max) |",
        "|---|---|---|---|---|",
    ]
    for r in rows[1:]:
        cells = [
            f"{statistics.median(s):.2f}x ({min(s):.2f}-{max(s):.2f})" for s in (r["speedups"][b] for b in BATCHES)
        ]
        lines.append(
            f"| {r['network']} | {r['macs'] / 1e6:.1f}M | {r['params'] / 1e3:.0f}k | " + " | ".join(cells) + " |"
        )
    dense = rows[0]["dense_ms"]
    lines += ["", f"Dense teacher per pass, ms at batch 256: {dense[256]}; at batch 1: {dense[1]}."]
    write_study(args.out, "channel_speed", {"command": command, "machine": machine(), "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
