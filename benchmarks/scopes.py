"""Pruning scopes: what global, layer-wise and LAMP pruning leave of each JPEG teacher, before any recovery.

Every teacher of ``shared/weights/cifar10-jpeg-teachers`` is pruned with each scope of
:data:`dfkd.prune.SCOPES` and scored on the whole JPEG test split. The emptiest layer's sparsity
shows why a single magnitude threshold can collapse a network whose layers have different scales.

Usage (from the repository root; writes JSON and a markdown table):

    python benchmarks/scopes.py --shared ../shared --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

import dfkd_core as dfkd
from dfkd_core.prune import SCOPES

TEACHERS = "weights/cifar10-jpeg-teachers"  # inside shared/
DATA = "data/cifar10-jpeg"  # inside shared/


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = dfkd.resolve_device(args.device)
    data = dfkd.load_eval_set(str(args.shared / DATA))
    rows = []
    for path in sorted((args.shared / TEACHERS).glob("*.pt")):
        teacher = dfkd.load_teacher(str(path))
        row = {"teacher": path.name, "dense": dfkd.evaluate(teacher.model, data, teacher.normalization, device=device)}
        for scope in SCOPES:
            pruned = dfkd.prune_model(teacher.model, args.sparsity, scope=scope)
            row[scope] = dfkd.evaluate(pruned, data, teacher.normalization, device=device)
            row[f"{scope}_emptiest"] = max(r.sparsity for r in dfkd.sparsity_report(pruned))
        rows.append(row)
        print(json.dumps(row), flush=True)

    header = "| teacher | dense | " + " | ".join(f"{s} (emptiest layer)" for s in SCOPES) + " |"
    lines = [header, "|---" * (2 + len(SCOPES)) + "|"]
    for row in rows:
        cells = [f"{row[s]:.2f} ({100 * row[f'{s}_emptiest']:.1f}%)" for s in SCOPES]
        lines.append(f"| {row['teacher']} | {row['dense']:.2f} | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "sparsity": args.sparsity,
        "images": len(data),
        "rows": rows,
        "versions": {"dfkd": dfkd.__version__, "torch": torch.__version__, "platform": platform.platform()},
    }
    (args.out / "scopes.json").write_text(json.dumps(record, indent=1))
    (args.out / "scopes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
