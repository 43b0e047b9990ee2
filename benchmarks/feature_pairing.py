"""Feature pairing: how a slimmer student's features are matched to the teacher's, and what each way pays.

The feature term of distillation compares the student's BatchNorm outputs with the teacher's. A student that
lost channels has fewer outputs than its teacher; three ways to compare them, each run on ResNet-20 with half
of the MACs removed in one cut (channels.py's ``resnet20-50`` row), on the same dreams:

    kept        the library's: each student channel against the teacher channel it was cut from
                (the ``kept_channels`` indices), the removed teacher channels left out
    projection  FitNets (Romero et al., ICLR 2015): a learned 1x1 convolution maps the student's channels to all
                of the teacher's, trained with the student (started as the kept pairing, so it begins where
                ``kept`` does and can learn to predict the removed channels too)
    logits      no feature term, the logits' KL only

The projection is not part of the library; this study patches its loss for the length of one row.

Usage (from the repository root; writes feature_pairing.json and feature_pairing.md):

    python benchmarks/feature_pairing.py --shared ../shared --out benchmarks/results --dream-cache /tmp/dfkd-dreams
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import channels as bench  # benchmarks/channels.py: run as `python benchmarks/<script>.py`
import torch
import torch.nn.functional as F
from recovery import machine
from tables import write_study
from torch import nn

distill = sys.modules["dfkd_core.distill"]  # the module (the package's `distill` is the function)

BASE_ROW = "resnet20-50"  # channels.py's row: ResNet-20, half of the MACs removed in one cut
PAIRINGS = ("kept", "projection", "logits")


def _projections(session) -> nn.ModuleDict:
    """One 1x1 convolution per tapped layer that lost channels (student width -> teacher width), started as the
    kept pairing: output channel kept[j] copies student channel j, the removed teacher channels start at zero."""
    layers = nn.ModuleDict()
    teacher_widths = {n: m.num_features for n, m in session.teacher.named_modules() if n in session.kept}
    for name, kept in session.kept.items():
        if kept is None:
            continue
        conv = nn.Conv2d(len(kept), teacher_widths[name], 1, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[kept, torch.arange(len(kept))] = 1.0
        layers[name.replace(".", "/")] = conv
    return layers.to(session.device)


def _loss_with_projection(session, batch: torch.Tensor) -> torch.Tensor:
    """distill._step_loss with the student's features projected onto all of the teacher's channels."""
    if not hasattr(session, "projections"):
        session.projections = _projections(session)
        session.projection_optimizer = torch.optim.SGD(session.projections.parameters(), lr=0.0, momentum=0.9)
    else:  # the previous step's backward filled the projections' gradients: step them at the student's lr
        for group in session.projection_optimizer.param_groups:
            group["lr"] = session.optimizer.param_groups[0]["lr"]
        session.projection_optimizer.step()
    session.projection_optimizer.zero_grad(set_to_none=True)
    config = session.config
    x = session.normalization.normalize(batch).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        teacher_logits = session.teacher(x)
    loss = distill._kd_loss(session.student(x), teacher_logits, config.temperature)
    student_taps, teacher_taps = session.taps
    features = 0.0
    for name, kept in session.kept.items():
        student_out, teacher_out = student_taps.outputs[name], teacher_taps.outputs[name]
        if kept is not None:
            student_out = session.projections[name.replace(".", "/")](student_out)
        features = features + F.mse_loss(student_out, teacher_out)
    return loss + config.feature_weight * features / len(session.kept)


@contextlib.contextmanager
def pairing(name: str) -> Iterator[str]:
    """Within the block, channels.py's ``resnet20-50`` row pairs features by ``name``; yields the row to run."""
    if name == "kept":
        yield BASE_ROW
        return
    row = f"{BASE_ROW}-{name}"
    base = bench.ROWS[BASE_ROW]
    if name == "logits":
        bench.ROWS[row] = dataclasses.replace(base, distill={**base.distill, "feature_weight": 0.0})
    else:
        bench.ROWS[row] = base
    saved = distill._step_loss
    if name == "projection":
        distill._step_loss = _loss_with_projection
    try:
        yield row
    finally:
        distill._step_loss = saved
        del bench.ROWS[row]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--pairings", nargs="+", default=list(PAIRINGS), choices=PAIRINGS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dream-cache", type=Path, help="keep the teacher's dreams here, and reuse them if present")
    args = parser.parse_args(argv)
    command = "python " + " ".join(["benchmarks/feature_pairing.py", *(argv if argv is not None else sys.argv[1:])])
    rows, dreams, started = [], {}, time.perf_counter()
    for name in args.pairings:
        with pairing(name) as row:
            result = bench._run_row(row, args, dreams)
        rows.append(
            {
                "pairing": name,
                "pruned_acc": result.pruned_acc,
                "recovered_acc": result.recovered_acc,
                "distill_s": round(result.timings["distill"]),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        f"Feature pairing, channels.py's `{BASE_ROW}` row (ResNet-20, 50% of MACs, one cut); {machine()}; `{command}`",
        "",
        "| pairing | pruned | **recovered** | distill s |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['pairing']} | {r['pruned_acc']:.2f} | **{r['recovered_acc']:.2f}** | {r['distill_s']} |" for r in rows
    ]
    record = {"command": command, "machine": machine(), "wall_s": round(time.perf_counter() - started), "rows": rows}
    write_study(args.out, "feature_pairing", record, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
