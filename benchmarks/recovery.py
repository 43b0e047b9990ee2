"""Recovery benchmark: JPEG CIFAR-10 teachers at several sparsities, against same-budget baselines.

For every teacher the dreams are made once and reused for every sparsity (they depend on the
teacher only), so the table's dream time is the one-off cost per teacher. Each row runs the
library's pipeline unchanged, with the baselines asked for:

    noise   the same refit and distillation on Gaussian-noise images (what the dreams buy)
    real    the same on as many REAL training images (not data-free: an upper bound)

Usage (from the repository root; writes JSON and a markdown table):

    python benchmarks/recovery.py --shared ../shared --out benchmarks/results
    python benchmarks/recovery.py --teachers mobilenetv2 --scopes global lamp --dream-cache /tmp/dfkd-dreams ...
    python benchmarks/recovery.py --render benchmarks/results/recovery.json   # the table again, no run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

import torch
from tables import (  # benchmarks/tables.py: run as `python benchmarks/<script>.py`
    cached_dreams,
    current_recipe,
    keep_dreams,
    rerender,
)

import dfkd_core as dfkd
from dfkd_core.prune import SCOPES

TEACHERS = {  # name -> checkpoint inside shared/weights/cifar10-jpeg-teachers
    "resnet20": "resnet20-12fca82f-jpeg.pt",
    "resnet56": "resnet56-4bfd9763-jpeg.pt",
    "mobilenetv2": "mobilenetv2_x0_5-jpeg.pt",
    "vgg11": "vgg11_bn-jpeg.pt",
}
DEFAULT_TEACHERS = ("resnet20", "resnet56")
SPARSITIES = (0.5, 0.75, 0.9)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def recipe_words(recipe: dict) -> str:
    """A recorded recipe (``settings.recipe`` of a report) in a few words, with its preset's name when it is one."""
    dream, kd = recipe["dream"], recipe["distill"]
    made = "a generator" if recipe.get("generator") else f"{dream['num_images']:,} dreams x {dream['steps']} steps"
    words = (
        f"{made}, {'' if recipe['refit'] else 'no '}refit, "
        f"distill {kd['epochs']} epochs in batches of {kd['batch_size']} at lr {kd['lr']}"
        + (f" after a {kd['lr_warmup']:g}-epoch lr warm-up" if kd.get("lr_warmup") else "")
        + (
            f", pruned gradually from {kd['gradual_start']:.0%} over {kd['gradual_epochs']} epochs"
            if kd.get("gradual_epochs")
            else ""
        )
        + ", "
        f"feature weight {kd['feature_weight']}, BatchNorm {kd['bn_mode']}, {'' if kd['cutmix'] else 'no '}cutmix"
        + (", student dropout on" if kd.get("dropout") else "")
    )
    names = [
        name
        for name, preset in dfkd.PRESETS.items()
        if json.loads(json.dumps(dataclasses.asdict(preset))) == current_recipe(recipe)
    ]
    return f"preset `{names[0]}` ({words})" if names else f"recipe: {words}"


def markdown(rows: list[dict], title: str) -> str:
    timing = [
        "Accuracies: top-1 % on the full test split. Times: seconds of wall clock per stage; the dreams are",
        "made once per teacher (first row) and reused at every sparsity, so *total* counts the dream time",
        'in the first row of each teacher only ("-": not run). Each baseline runs the same refit and',
        "distillation on as many noise or real images.",
    ]
    if any("dream_cached" in r["timings_s"] for r in rows):
        timing.append("*(n)*: dreams loaded from `--dream-cache`; making them took n seconds, as recorded in the file.")
    lines = [
        title,
        "",
        *timing,
        "",
        "| teacher | sparsity | scope | teacher acc | pruned | noise | **recovered (dreams)** | real images "
        "| dream s | refit s | distill s | noise s | real s | total s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        noise, real, t = r["baselines"]["noise"], r["baselines"]["real"], r["timings_s"]
        lines.append(
            f"| {r['name']} | {r['sparsity']['target']:.0%} | {r['sparsity']['scope']} "
            f"| {r['teacher_acc']:.2f} | {r['pruned_acc']:.2f} "
            f"| {_accuracy(noise)} | **{r['recovered_acc']:.2f}** | {_accuracy(real)} "
            f"| {_dream_seconds(t)} | {_seconds(t, 'refit')} | {_seconds(t, 'distill')} | {_seconds(t, 'noise')} "
            f"| {_seconds(t, 'real')} | {_seconds(t, 'total')} |"
        )
    return "\n".join(lines) + "\n"


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"  # "-": the baseline was not run


def _dream_seconds(timings: dict) -> str:
    cached = timings.get("dream_cached")
    return _seconds(timings, "dream") if cached is None else f"({cached:.0f})"  # (n): made earlier, n seconds


def _seconds(timings: dict, stage: str) -> str:
    return f"{timings[stage]:.0f}" if stage in timings else "-"  # "-": the stage did not run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--teachers", nargs="+", default=list(DEFAULT_TEACHERS), choices=list(TEACHERS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    parser.add_argument("--scopes", nargs="+", default=["global"], choices=list(SCOPES), help="pruning scopes")
    parser.add_argument("--dream-cache", type=Path, help="keep each teacher's dreams here, and reuse them if present")
    parser.add_argument("--append", action="store_true", help="add the rows to those of --out/recovery.json")
    parser.add_argument("--preset", default="default", choices=list(dfkd.PRESETS), help="recipe preset")
    parser.add_argument(
        "--gradual-epochs", type=int, help="override the preset's distill gradual_epochs (0 = pruned in one cut)"
    )
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=["noise", "real"],
        choices=["noise", "real"],
        help="same-budget baselines to run (given without a name: none, the dreams alone)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--render", type=Path, help="only rewrite the markdown table from this recovery.json")
    args = parser.parse_args(argv)
    if args.render:
        return rerender(args.render, lambda record: markdown(record["rows"], _title(record["meta"], record["rows"])))

    data = args.shared / "data" / "cifar10-jpeg"
    if not data.is_dir():
        parser.error(f"{data} not found; pass --shared pointing at the shared/ assets folder")
    gradual = {} if args.gradual_epochs is None else {"gradual_epochs": args.gradual_epochs}
    recipe = dfkd.with_overrides(dfkd.get_preset(args.preset), distill=gradual)
    args.out.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((args.out / "recovery.json").read_text()) if args.append else {"meta": {}, "rows": []}
    rows = earlier["rows"]
    for name in args.teachers:
        checkpoint = args.shared / "weights" / "cifar10-jpeg-teachers" / TEACHERS[name]
        dreams = cached_dreams(args.dream_cache, name, recipe)
        for sparsity, scope in ((sparsity, scope) for sparsity in args.sparsities for scope in args.scopes):
            config = dfkd.RecoveryConfig(
                teacher=str(checkpoint),
                data=str(data),
                sparsity=sparsity,
                scope=scope,
                recipe=recipe,
                baselines=tuple(args.baselines),
                device=args.device,
            )
            result = dfkd.run_recovery(config, dreams=dreams)
            dreams = result.dreams
            keep_dreams(args.dream_cache, name, dreams)
            report = result.report()
            report.pop("layers")
            report["name"] = name
            if result.dreams.origin and not any(row["name"] == name for row in rows):  # dreams from --dream-cache
                report["timings_s"]["dream_cached"] = round(result.dreams.seconds, 1)  # what making them took
            rows.append(report)
            print(
                f"{name} @ {sparsity:.0%} ({scope}): teacher {result.teacher_acc:.2f} pruned {result.pruned_acc:.2f} "
                f"noise {result.baselines['noise']} recovered {result.recovered_acc:.2f} "
                f"real {result.baselines['real']} ({result.timings['total']:.0f} s)",
                flush=True,
            )
            table = write_results(args, argv, rows, earlier["meta"])  # after every row: no lost work
    print(table)
    return 0


def _title(meta: dict, rows: list[dict]) -> str:
    return (
        f"Recovery on CIFAR-10 (JPEG) test, {rows[0]['eval']['num_images']:,} images; "
        f"{recipe_words(rows[0]['settings']['recipe'])}; {meta['machine']}; torch {meta['versions']['torch']}; "
        + "; then ".join(f"`{command}`" for command in meta.get("commands") or [meta["command"]])
    )


def write_results(args: argparse.Namespace, argv: list[str] | None, rows: list[dict], earlier: dict) -> str:
    """Write recovery.json and recovery.md for the rows so far (after those of ``earlier`` runs, whose
    commands are kept in order); returns the markdown table."""
    command = "python " + " ".join(["benchmarks/recovery.py", *(argv if argv is not None else sys.argv[1:])])
    before = earlier.get("commands") or ([earlier["command"]] if "command" in earlier else [])
    meta = {
        "commands": [*before, command],
        "machine": machine(),
        "device": rows[0]["device"],
        "versions": rows[0]["versions"],
        "preset": args.preset,
    }
    (args.out / "recovery.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    table = markdown(rows, _title(meta, rows))
    (args.out / "recovery.md").write_text(table)
    return table


if __name__ == "__main__":
    sys.exit(main())
