"""The README's results table: the default recipe on every JPEG teacher, in one command.

Rows (``--rows`` picks some by name, e.g. ``resnet20-w75-global-s1``):

    <teacher>-w<50|75|90>-<scope>-s<seed>   that share of the weights pruned with that scope: at 90% with each of
                                    global and lamp; at 50% and 75% with the default, seeds 0, 1, 2 at 75%
    <teacher>-c<50|75>-<scope>-s0   whole channels removed until that share of MACs is gone (the channel recipe)

for the teachers resnet20, resnet56, mobilenetv2 and vgg11 of ``shared/weights/cifar10-jpeg-teachers``
(channels: resnet20 and mobilenetv2 at 50%, resnet56 at 50% and 75%). Every row is one run of the library's
pipeline, unchanged, scored on the full JPEG test split. The seed varies everything a run draws: pruning ties, the
dreams, the learning-rate probes and distillation. Dreams depend on the teacher, the dream recipe and the seed only,
so a teacher's first row of a seed makes them and its other rows of that seed reuse them from the library's dream
cache.

Every run judges itself on its held-out dreams alone (the learning rate it chose, the epoch it kept); the curve
of test accuracy per epoch is measured beside it, never used. From the two the script computes, per run, the
rank correlation (Spearman) of the held-out agreement with test accuracy over the epochs: ``holdout_agreement.md`` and
``holdout_agreement.png``. Times: the parts that judge the run (dreaming the held-out dreams, the probes, the scoring)
are measured apart, so each row also gives its time without them: what judging itself costs the run.

Usage (from the repository root; results are written after every row, and a second call runs only the rows
missing from ``--out``):

    python benchmarks/headline.py --shared ../shared --out benchmarks/results/headline
    python benchmarks/headline.py --render benchmarks/results/headline/headline.json   # tables and figure again
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from recovery import TEACHERS, machine  # benchmarks/recovery.py: run as `python benchmarks/<script>.py`

import dfkd_core as dfkd

DEFAULT_SCOPE = dfkd.RecoveryConfig("x").scope  # the library's default weight-pruning scope


@dataclass(frozen=True)
class Row:
    teacher: str
    sparsity: float
    granularity: str = "weight"
    scope: str = DEFAULT_SCOPE
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.teacher}-{self.granularity[0]}{round(100 * self.sparsity)}-{self.scope}-s{self.seed}"


SEEDS = (0, 1, 2)  # the 75% rows are run with each; the others with the first
STUDIED_SCOPES = ("global", "lamp")  # at 90% of the weights, where a layer can be emptied: each is run
ROWS = {
    row.name: row
    for row in [
        *(Row(teacher, 0.9, scope=scope) for scope in STUDIED_SCOPES for teacher in TEACHERS),
        *(
            Row(teacher, sparsity, seed=seed)
            for teacher in TEACHERS
            for sparsity in (0.5, 0.75)
            for seed in (SEEDS if sparsity == 0.75 else SEEDS[:1])
        ),
        Row("resnet20", 0.5, "channel"),
        Row("resnet56", 0.5, "channel"),
        Row("resnet56", 0.75, "channel"),
        Row("mobilenetv2", 0.5, "channel"),
    ]
}


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation of two equally long lists (ties get their mean rank); NaN when one is flat."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        rank = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                rank[order[k]] = (i + j) / 2
            i = j + 1
        return rank

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm else math.nan


def _epochs(report: dict) -> list[tuple[float, float]]:
    """(test accuracy on the curve subset, held-out agreement) of every epoch of a run measured by both."""
    accuracy = dict(zip(report["curve"]["epochs"], report["curve"]["accuracy"]))
    agreement = report["distill"]["holdout_agreement"]
    return [(accuracy[e], v) for e, v in zip(agreement["epochs"], agreement["percent"]) if e in accuracy]


def tracking(report: dict) -> float:
    """Within one run, Spearman's rank correlation of test accuracy (curve subset) with the held-out agreement,
    over every epoch measured by both."""
    pairs = _epochs(report)
    return spearman([a for a, _ in pairs], [v for _, v in pairs])


def run_row(row: Row, args: argparse.Namespace) -> dict:
    """One run of the pipeline for ``row`` (the teacher's dreams come from the dream cache after its first row)."""
    data = args.shared / "data" / "cifar10-jpeg"
    checkpoint = args.shared / "weights" / "cifar10-jpeg-teachers" / TEACHERS[row.teacher]
    config = dfkd.RecoveryConfig(
        teacher=str(checkpoint),
        data=str(data),
        sparsity=row.sparsity,
        scope=row.scope,
        granularity=row.granularity,
        baselines=tuple(args.baselines),
        device=args.device,
        seed=row.seed,
    )
    bars = dfkd.ProgressBars(file=sys.stderr)
    try:
        result = dfkd.run_recovery(config, callback=bars)
    finally:
        bars.close()
    report = result.report()
    report["name"], report["row"] = row.name, {**row.__dict__}
    report["dreams"]["made_by_this_row"] = result.dreams.origin is None
    report["dreams"]["holdout_seconds"] = result.dreams.holdout_seconds  # of the dreams' own making time
    report["unguarded_curve_acc"] = result.curve[-1][1]  # the last epoch's, which a run without the guard returns
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DFKD_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/headline"))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), metavar="ROW", help="only these rows (default: all)")
    parser.add_argument("--baselines", nargs="*", default=[], choices=["noise", "real"], help="(default: none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--render", type=Path, help="only rewrite the tables and the figure from this JSON")
    args = parser.parse_args(argv)
    if args.render:
        record = json.loads(args.render.read_text())
        write_tables(args.render.parent, record)
        return 0
    if not (args.shared / "data" / "cifar10-jpeg").is_dir():
        parser.error(f"{args.shared / 'data' / 'cifar10-jpeg'} not found; pass --shared pointing at shared/")
    dfkd.limit_threads()
    results = args.out / "headline.json"
    record = json.loads(results.read_text()) if results.is_file() else {"meta": {}, "rows": []}
    done = {report["name"] for report in record["rows"]}
    command = "python benchmarks/headline.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in args.rows or list(ROWS):
        if name in done:
            continue
        report = run_row(ROWS[name], args)
        record["rows"].append(report)
        record["meta"] = {
            "commands": sorted({*record["meta"].get("commands", []), command}),
            "machine": machine(),
            "versions": report["versions"],
        }
        args.out.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(record, indent=1) + "\n")  # after every row: no lost work
        print(f"{name}: {report['pruned_acc']:.2f} -> {report['recovered_acc']:.2f}", flush=True)
    write_tables(args.out, record)
    return 0


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def results_table(record: dict) -> list[str]:
    """One line per teacher and sparsity: the seeds' mean and spread, what the runs chose, the times."""
    groups: dict[tuple[str, str, float, str], list[dict]] = {}
    for report in record["rows"]:
        row = report["row"]
        groups.setdefault((row["teacher"], row["granularity"], row["sparsity"], row["scope"]), []).append(report)
    dream_s = {r["row"]["teacher"]: r["timings_s"]["dream"] for r in record["rows"]}  # the set's making, reused
    held_s = {r["row"]["teacher"]: r["dreams"]["holdout_seconds"] for r in record["rows"]}
    lines = [
        "| teacher | removed | scope | teacher acc | pruned | **recovered** | lr (auto) | kept epoch | seeds "
        "| dream s (of which held out) | distill s (of which judging) | time without judging |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (teacher, granularity, sparsity, scope), reports in sorted(groups.items()):
        first = reports[0]
        of = "weights" if granularity == "weight" else "MACs"
        lrs = ", ".join(f"{r['distill']['lr']:.3g}" for r in reports)
        kept = ", ".join(
            "start" if r["distill"]["kept_epoch"] == 0 else str(r["distill"]["kept_epoch"]) for r in reports
        )
        distill = statistics.fmean(r["timings_s"]["distill"] for r in reports)
        judging = statistics.fmean(
            r["timings_s"].get("probes", 0) + r["timings_s"].get("holdout_agreement", 0) for r in reports
        )
        total = dream_s.get(teacher, math.nan) + distill
        before = total - held_s.get(teacher, 0.0) - judging
        lines.append(
            f"| {teacher} | {sparsity:.0%} of {of} | {scope} | {first['teacher_acc']:.2f} "
            f"| {_mean_sd([r['pruned_acc'] for r in reports])} | **{_mean_sd([r['recovered_acc'] for r in reports])}** "
            f"| {lrs} | {kept} | {len(reports)} | {dream_s.get(teacher, math.nan):.0f} ({held_s.get(teacher, 0):.0f}) "
            f"| {distill:.0f} ({judging:.0f}) | {before:.0f} s: +{100 * (total / before - 1):.0f}% |"
        )
    return lines


def tracking_table(record: dict) -> list[str]:
    """Per run: how closely the held-out agreement follows test accuracy over the epochs."""
    lines = [
        "| run | epochs | Spearman (accuracy, agreement) | accuracy kept / best epoch's (curve subset) |",
        "|---|---|---|---|",
    ]
    for report in record["rows"]:
        curve = dict(zip(report["curve"]["epochs"], report["curve"]["accuracy"]))
        kept = report["distill"]["kept_epoch"]
        lines.append(
            f"| {report['name']} | {len(curve)} | {tracking(report):.2f} "
            f"| {curve.get(kept, math.nan):.2f} / {max(curve.values()):.2f} |"
        )
    values = [tracking(report) for report in record["rows"]]
    lines.append(f"| **median of {len(values)} runs** | | **{statistics.median(values):.2f}** | |")
    pairs = [pair for report in record["rows"] for pair in _epochs(report)]
    pooled = spearman([a for a, _ in pairs], [v for _, v in pairs])
    lines.append(f"| **every epoch of every run, pooled** | {len(pairs)} | **{pooled:.2f}** | |")
    return lines


def tracking_figure(record: dict) -> Figure:
    """Left: each run's Spearman correlation. Right: every epoch of every run, accuracy against held-out agreement."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    bars, scatter = fig.subplots(1, 2, width_ratios=[1, 1.3])
    names = [report["name"] for report in record["rows"]]
    bars.barh(range(len(names)), [tracking(report) for report in record["rows"]], color="tab:blue")
    bars.set_yticks(range(len(names)), names, fontsize=6)
    bars.invert_yaxis()
    bars.axvline(0.9, color="tab:red", linestyle=":", label="0.9")
    bars.set_xlim(-1, 1)
    bars.set_xlabel("Spearman: test accuracy vs held-out agreement, within the run")
    bars.legend(fontsize=7)
    colors = {"resnet20": "tab:blue", "resnet56": "tab:green", "mobilenetv2": "tab:orange", "vgg11": "tab:purple"}
    for teacher, color in colors.items():
        xs, ys = [], []
        for report in record["rows"]:
            if report["row"]["teacher"] != teacher:
                continue
            accuracy = dict(zip(report["curve"]["epochs"], report["curve"]["accuracy"]))
            agreement = report["distill"]["holdout_agreement"]
            for epoch, value in zip(agreement["epochs"], agreement["percent"]):
                if epoch in accuracy:
                    xs.append(value)
                    ys.append(accuracy[epoch])
        if xs:
            scatter.scatter(xs, ys, s=6, color=color, alpha=0.6, label=teacher)
    scatter.set_xlabel("agreement with the teacher on held-out dreams, % (data-free)")
    scatter.set_ylabel("test accuracy, curve subset (%)")
    scatter.legend(fontsize=7)
    scatter.grid(alpha=0.3)
    fig.suptitle("Does the data-free score track test accuracy? Every epoch of every run", fontsize=10)
    return fig


def write_tables(out: Path, record: dict) -> None:
    meta = record["meta"]
    head = [
        f"Full JPEG CIFAR-10 test split (10,000 images); {meta['machine']}; torch {meta['versions']['torch']}; "
        + "; ".join(f"`{command}`" for command in meta["commands"]),
        "",
    ]
    (out / "headline.md").write_text("\n".join([*head, *results_table(record)]) + "\n")
    (out / "holdout_agreement.md").write_text("\n".join([*head, *tracking_table(record)]) + "\n")
    tracking_figure(record).savefig(out / "holdout_agreement.png", dpi=130)
    print("\n".join(results_table(record)))
    print("\n".join(tracking_table(record)))


if __name__ == "__main__":
    sys.exit(main())
