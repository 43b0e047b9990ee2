"""Channel pruning: data-free recovery of students that lost whole channels, and what they gain in speed.

Each row is one run of the library's pipeline with the default recipe (one knob changed, as its name says), on a JPEG teacher of
``shared/weights/cifar10-jpeg-teachers``, scored on the full JPEG test split. The dreams are made
once per teacher and reused for every row of that teacher (they do not depend on the pruning).
Latency is measured by the pipeline itself: CPU, batch 1 and 256, the median of 7 rounds in which
the dense teacher and the student take turns.

Rows (``--rows``, by name):

    resnet56-50, resnet56-75, resnet20-50, mobilenetv2-50   channel pruning to that share of MACs removed, in one
                               cut before distillation
    <row>-gradual              the same with the default recipe for channels: pruned gradually during distillation
    resnet56-75(-gradual), resnet56-50-gradual   also run the same recipe on 1,024 real training images (not data-free,
                               not data-free)
    resnet20-50-gradual-15     the target reached after 15 of the 30 epochs instead of 25
    resnet56-50-gradual-long   twice the epochs (60, the target reached after 50)
    resnet20-50-gradual-from-0 the student starts as the whole teacher (no channel removed) instead of at 20%
    resnet20-50-gradual-lr     half the learning rate (0.05)
    mobilenetv2-50-gradual-lr  lr 0.03, the rate at which MobileNetV2's weight pruning recovers best
    resnet20-50-best, resnet56-50-best   preset best for channels: 2,048 dreams, 60 epochs, the target reached after 50
    mobilenetv2-50-gradual-layerwise   the same fraction of channels removed from every layer at each step
    resnet56-50-layerwise      the same fraction removed from every layer instead of one global ranking
    resnet56-50-logits         no feature term (the kept-channel feature matching switched off)
    resnet56-weights-50/75/90  unstructured weight pruning, for accuracy against parameters kept
    resnet20-50-long           twice the distillation epochs (60): does a slimmer student need a longer recipe?

``--weights-from results/recovery.json`` takes the weight-pruning points of the plot from the recovery
benchmark's rows instead (the same default recipe and teacher), counting their nonzero parameters here.

Usage (from the repository root; writes channels.json, channels.md and channels.png):

    python benchmarks/channels.py --shared ../shared --out benchmarks/results
    python benchmarks/channels.py --render benchmarks/results/channels.json   # table and plot again, no run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from recovery import machine, recipe_words  # benchmarks/recovery.py: run as `python benchmarks/<script>.py`
from tables import cached_dreams, current_recipe, keep_dreams

import dfkd_core as dfkd
from dfkd_core.evaluate import measure_size

TEACHERS = {  # name -> checkpoint inside shared/weights/cifar10-jpeg-teachers
    "resnet20": "resnet20-12fca82f-jpeg.pt",
    "resnet56": "resnet56-4bfd9763-jpeg.pt",
    "mobilenetv2": "mobilenetv2_x0_5-jpeg.pt",
}


@dataclass(frozen=True)
class Row:
    teacher: str
    sparsity: float
    granularity: str = "channel"
    scope: str = "global"
    preset: str = "default"  # the preset whose channel recipe the row runs
    distill: dict = field(default_factory=dict)  # overrides of the preset's distillation
    baselines: tuple[str, ...] = ()


ONE_CUT = {"gradual_epochs": 0}  # all channels removed before distillation instead of gradually during it

ROWS = {
    "resnet56-50": Row("resnet56", 0.5, distill=ONE_CUT),
    "resnet56-75": Row("resnet56", 0.75, distill=ONE_CUT, baselines=("real",)),
    "resnet20-50": Row("resnet20", 0.5, distill=ONE_CUT),
    "mobilenetv2-50": Row("mobilenetv2", 0.5, distill=ONE_CUT),
    "resnet56-50-gradual": Row("resnet56", 0.5, baselines=("real",)),
    "resnet56-75-gradual": Row("resnet56", 0.75, baselines=("real",)),
    "resnet20-50-gradual": Row("resnet20", 0.5),
    "mobilenetv2-50-gradual": Row("mobilenetv2", 0.5),
    "resnet20-50-gradual-15": Row("resnet20", 0.5, distill={"gradual_epochs": 15}),
    "resnet56-50-gradual-long": Row("resnet56", 0.5, distill={"epochs": 60}),
    "resnet20-50-gradual-from-0": Row("resnet20", 0.5, distill={"gradual_start": 0.0}),
    "resnet20-50-gradual-lr": Row("resnet20", 0.5, distill={"lr": 0.05}),
    "resnet20-50-best": Row("resnet20", 0.5, preset="best"),
    "resnet56-50-best": Row("resnet56", 0.5, preset="best"),
    "mobilenetv2-50-gradual-layerwise": Row("mobilenetv2", 0.5, scope="layerwise"),
    "mobilenetv2-50-gradual-lr": Row("mobilenetv2", 0.5, distill={"lr": 0.03}),
    "resnet56-50-layerwise": Row("resnet56", 0.5, distill=ONE_CUT, scope="layerwise"),
    "resnet56-50-logits": Row("resnet56", 0.5, distill={**ONE_CUT, "feature_weight": 0.0}),
    "resnet56-weights-50": Row("resnet56", 0.5, granularity="weight"),
    "resnet56-weights-75": Row("resnet56", 0.75, granularity="weight"),
    "resnet56-weights-90": Row("resnet56", 0.9, granularity="weight"),
    "resnet20-50-long": Row("resnet20", 0.5, distill={**ONE_CUT, "epochs": 60}),
}


def markdown(record: dict) -> str:
    rows, meta = record["rows"], record["meta"]
    recipes: dict[str, list[str]] = {}  # rows measured at different times may differ in a knob: name each recipe's rows
    for r in rows:
        recipes.setdefault(recipe_words(r["settings"]["recipe"]), []).append(r["name"])
    words = "; ".join(w if len(recipes) == 1 else f"{w} (rows {', '.join(names)})" for w, names in recipes.items())
    lines = [
        f"Channel pruning on CIFAR-10 (JPEG) test, {rows[0]['eval']['num_images']:,} images; "
        f"{words}; {meta['machine']}; torch {meta['versions']['torch']}; "
        + "; ".join(f"`{c}`" for c in meta.get("commands") or [meta["command"]]),
        "",
        "Removed: share of MACs (channel) or of Conv/Linear weights (weight). Params and MACs: of the recovered",
        "student (teacher in brackets). Speed-up: the teacher's CPU latency over the student's, same process,",
        "interleaved, median of 7. Dream and distill: seconds (a fixed dream set is made once per teacher and",
        "shared, its time is the recovery benchmark's; the retired generator dreamed anew in its row).",
        "",
        "| row | removed | params | MACs | teacher acc | pruned | **recovered** | real images "
        "| speed-up batch 1 | speed-up batch 256 | student ms (batch 256) | dream s | distill s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size, teacher, latency = r["size"]["recovered"], r["size"]["teacher"], r["latency_ms"]
        real = r["baselines"]["real"]
        dreamed_anew = r["settings"]["recipe"].get("generator")  # a record of the retired generator synthesis
        dream_s = f"{r['timings_s']['dream']:.0f}" if dreamed_anew else "shared"
        lines.append(
            f"| {r['name']} | {r['sparsity']['measured']:.1%} of {r['sparsity']['of']} "
            f"| {size['nonzero_params'] / 1e3:,.0f}k ({teacher['params'] / 1e3:,.0f}k) "
            f"| {size['macs'] / 1e6:.1f}M ({teacher['macs'] / 1e6:.1f}M) | {r['teacher_acc']:.2f} "
            f"| {r['pruned_acc']:.2f} | **{r['recovered_acc']:.2f}** | {'-' if real is None else f'{real:.2f}'} "
            f"| {latency['speedup']['1']:.2f}x | {latency['speedup']['256']:.2f}x | {latency['recovered']['256']:.0f} "
            f"| {dream_s} | {r['timings_s']['distill']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _default(granularity: str) -> dict:
    """The default recipe for ``granularity``, as a results file records it."""
    return json.loads(json.dumps(dataclasses.asdict(dfkd.get_preset("default", granularity))))


def figure(record: dict, teacher: str = "resnet56") -> Figure:
    """Recovered accuracy against parameters kept, weight and channel pruning of one teacher, one plot."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    rows = [r for r in record["rows"] if r["teacher_name"] == teacher and r["settings"]["scope"] == "global"]
    rows = [r for r in rows if current_recipe(r["settings"]["recipe"]) == _default(r["sparsity"]["granularity"])]
    measured = [(r["sparsity"]["granularity"], r["size"]["recovered"]["nonzero_params"], r) for r in rows]
    measured += [("weight", p["nonzero_params"], p) for p in record.get("weight_points", [])]
    for granularity, style in (("weight", "o-"), ("channel", "s-")):
        points = sorted((params / 1e3, r) for g, params, r in measured if g == granularity)
        if not points:
            continue
        label = "weights (same shape and speed)" if granularity == "weight" else "channels (smaller and faster)"
        ax.plot([p for p, _ in points], [r["recovered_acc"] for _, r in points], style, label=label)
        for params, r in points:
            removed = r["sparsity"]["measured"] if isinstance(r["sparsity"], dict) else r["sparsity"]
            speed = f", {r['latency_ms']['speedup']['256']:.2f}x" if granularity == "channel" else ""
            ax.annotate(
                f"{removed:.0%}{speed}",
                (params, r["recovered_acc"]),
                textcoords="offset points",
                xytext=(4, -12),
                fontsize=8,
            )
    if rows:
        ax.axhline(rows[0]["teacher_acc"], color="gray", ls="--", label=f"teacher ({rows[0]['teacher_acc']:.2f})")
        ax.plot(rows[0]["size"]["teacher"]["params"] / 1e3, rows[0]["teacher_acc"], "k*", markersize=10)
    ax.set_xlabel("parameters kept (thousands, nonzero)")
    ax.set_ylabel("recovered top-1 % (JPEG test, 10,000)")
    ax.set_title(
        f"{teacher}: data-free recovery, weight vs channel pruning\n(labels: removed, CPU speed-up at batch 256)"
    )
    ax.margins(y=0.1)  # room for the labels under the lowest point
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def write(out: Path, record: dict) -> str:
    (out / "channels.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(record)
    (out / "channels.md").write_text(table)
    figure(record).savefig(out / "channels.png", dpi=120)
    return table


def _weight_points(recovery: Path, shared: Path, teacher: str = "resnet56") -> list[dict]:
    """The recovery benchmark's weight-pruning rows of ``teacher`` made with the default recipe, with the nonzero
    parameters they keep."""
    model = dfkd.load_teacher(str(shared / "weights" / "cifar10-jpeg-teachers" / TEACHERS[teacher])).model
    default = _default("weight")
    points = []
    for row in json.loads(recovery.read_text())["rows"]:
        if row["name"] == teacher and current_recipe(row["settings"]["recipe"]) == default:
            kept = measure_size(dfkd.prune_model(model, row["sparsity"]["target"])).nonzero_params
            points.append(
                {
                    "sparsity": row["sparsity"]["measured"],
                    "recovered_acc": row["recovered_acc"],
                    "nonzero_params": kept,
                    "source": recovery.name,
                }
            )
    return points


def _run_row(name: str, args: argparse.Namespace, dreams: dict[str, dfkd.DreamSet]) -> dfkd.RecoveryResult:
    """One row run by the library; the dream set is shared per teacher and preset (and kept in ``--dream-cache``)."""
    row = ROWS[name]
    recipe = dfkd.get_preset(row.preset, row.granularity)  # channels: pruned gradually during distillation
    recipe = dfkd.with_overrides(recipe, distill=row.distill)
    key = row.teacher if row.preset == "default" else f"{row.teacher}-{row.preset}"  # dreams of other settings
    if key not in dreams and (cached := cached_dreams(args.dream_cache, key, recipe)):
        dreams[key] = cached
    config = dfkd.RecoveryConfig(
        teacher=str(args.shared / "weights" / "cifar10-jpeg-teachers" / TEACHERS[row.teacher]),
        data=str(args.shared / "data" / "cifar10-jpeg"),
        sparsity=row.sparsity,
        scope=row.scope,
        granularity=row.granularity,
        recipe=recipe,
        baselines=row.baselines,
        device=args.device,
    )
    result = dfkd.run_recovery(config, dreams=dreams.get(key))
    keep_dreams(args.dream_cache, key, result.dreams)
    dreams[key] = result.dreams
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dream-cache", type=Path, help="keep each teacher's dreams here, and reuse them if present")
    parser.add_argument("--weights-from", type=Path, help="recovery.json whose resnet56 rows give the weight points")
    parser.add_argument("--append", action="store_true", help="keep the other rows of --out/channels.json")
    parser.add_argument("--render", type=Path, help="only rewrite the table and plot from this channels.json")
    args = parser.parse_args(argv)
    if args.render:
        print(write(args.render.parent, json.loads(args.render.read_text())))
        return 0

    data = args.shared / "data" / "cifar10-jpeg"
    if not data.is_dir():
        parser.error(f"{data} not found; pass --shared pointing at the shared/ assets folder")
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(["benchmarks/channels.py", *(argv if argv is not None else sys.argv[1:])])
    earlier = json.loads((args.out / "channels.json").read_text()) if args.append else {"meta": {}, "rows": []}
    weight_points = _weight_points(args.weights_from, args.shared) if args.weights_from else []
    weight_points = weight_points or earlier.get("weight_points", [])
    dreams: dict[str, dfkd.DreamSet] = {}
    rows: list[dict] = []
    started = time.perf_counter()
    for name in args.rows:
        result = _run_row(name, args, dreams)
        report = result.report()
        report.pop("layers")
        report.update(name=name, teacher_name=ROWS[name].teacher)
        rows.append(report)
        fresh = {r["name"]: r for r in rows}
        merged = [fresh.pop(r["name"], r) for r in earlier["rows"]] + list(fresh.values())  # a rerun replaces its row
        speed = ", ".join(f"{x:.2f}x at batch {b}" for b, x in result.speedup().items())
        print(
            f"{name}: teacher {result.teacher_acc:.2f} pruned {result.pruned_acc:.2f} recovered "
            f"{result.recovered_acc:.2f} real {result.baselines['real']} ({result.pruning}; {speed}; "
            f"{result.timings['total']:.0f} s)",
            flush=True,
        )
        before = earlier["meta"].get("commands") or ([earlier["meta"]["command"]] if earlier["meta"] else [])
        meta = {
            "commands": [*before, command],
            "machine": machine(),
            "versions": rows[0]["versions"],
            "wall_s": round(time.perf_counter() - started),
        }
        table = write(args.out, {"meta": meta, "rows": merged, "weight_points": weight_points})  # no lost work
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
