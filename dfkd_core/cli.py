"""``dfkd`` command line: list teachers, evaluate one, recover a pruned one.

Every recipe knob of :class:`InversionConfig` (``--inv-*``), :class:`ReconstructionConfig`
(``--recon-*``, with ``--reconstruction/--no-reconstruction`` to switch the stage) and
:class:`DistillConfig` (``--kd-*``) is a flag, generated from the dataclasses so the two can never
drift apart.
Errors a user can fix end with one readable line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import __version__
from .events import Event, Finished, MetricLogged, Notice, Progress, StageFinished, StageStarted
from .invert import DreamSet
from .pipeline import PRESETS, RecoveryConfig, RecoveryResult, get_preset, recover, with_overrides
from .reconstruct import ReconstructionConfig
from .zoo import get_pretrained, list_teachers

EXIT_USAGE = 2
_FLAG_PREFIXES = {"inversion": "inv", "reconstruction": "recon", "distill": "kd"}


def _field_comments(cls: type) -> dict[str, str]:
    """The one-line comment written beside each dataclass field, used as its ``--help`` text."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return dict(re.findall(r"^\s+(\w+): [^=\n]+=[^#\n]*#\s*(.+)$", source, flags=re.MULTILINE))


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    default = get_preset("default")
    for section, prefix in _FLAG_PREFIXES.items():
        config = getattr(default, section) or ReconstructionConfig()
        group = parser.add_argument_group(
            f"{section} recipe (override the preset; defaults shown are the 'default' preset)"
        )
        if section == "reconstruction":
            group.add_argument("--reconstruction", action=argparse.BooleanOptionalAction, default=None,
                               help="refit the pruned layers on the dreams before distillation (default: as the preset)")  # fmt: skip
        comments = _field_comments(type(config))
        for f in dataclasses.fields(config):
            flag = f"--{prefix}-{f.name.replace('_', '-')}"
            value = getattr(config, f.name)
            help_text = f"{comments.get(f.name, '')} (default: {value})"
            dest = f"{section}.{f.name}"
            if isinstance(value, bool):
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            else:
                group.add_argument(
                    flag,
                    dest=dest,
                    type=type(value),
                    default=None,
                    metavar=type(value).__name__.upper(),
                    help=help_text,
                )


def _recipe_from_args(args: argparse.Namespace):
    overrides: dict[str, dict[str, Any]] = {section: {} for section in _FLAG_PREFIXES}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            overrides[section][name] = value
    return with_overrides(get_preset(args.preset), overrides["inversion"], overrides["distill"],
                          overrides["reconstruction"], reconstruct=args.reconstruction)  # fmt: skip


def _add_teacher_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="registry id (see `dfkd teachers`) or checkpoint path")
    parser.add_argument("--arch", help="architecture of a checkpoint that does not record it")
    parser.add_argument("--normalization", help="'imagenet', 'cifar10' or 'm1,m2,m3,s1,s2,s3' (if not recorded)")
    parser.add_argument(
        "--data", default="cifar10", help="evaluation data: 'cifar10' or an ImageFolder root with test/"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfkd", description="Data-free recovery of pruned networks (DeepInversion + KD)."
    )
    parser.add_argument("--version", action="version", version=f"dfkd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    teachers = commands.add_parser("teachers", help="list the pretrained teachers of the registry")
    teachers.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*resnet*'")
    teachers.add_argument("--json", action="store_true", help="print one JSON object per line")

    evaluate = commands.add_parser("evaluate", help="top-1 accuracy of a teacher on held-out data")
    _add_teacher_flags(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")

    rec = commands.add_parser("recover", help="prune a teacher and recover it by data-free distillation")
    _add_teacher_flags(rec)
    rec.add_argument(
        "--sparsity", type=float, default=0.75, help="fraction of Conv/Linear weights to remove, in [0, 1)"
    )
    rec.add_argument("--scope", choices=("global", "layerwise"), default="global", help="pruning threshold scope")
    rec.add_argument(
        "--out", required=True, type=Path, help="output directory (report.json, dreams.png, curves.png, ...)"
    )
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--preset", choices=tuple(PRESETS), default="default", help="recipe preset")
    rec.add_argument("--baselines", default="noise",
                     help="comma list of same-budget baselines: noise, real (oracle on real training images), or none")  # fmt: skip
    rec.add_argument(
        "--curve-per-class", type=int, default=200, help="test images per class for the per-epoch curve (0 = all)"
    )
    rec.add_argument(
        "--eval-per-class", type=int, default=0, help="test images per class for reported accuracies (0 = all)"
    )
    rec.add_argument(
        "--dreams", type=Path, help="reuse dreams.pt from an earlier run of the same teacher (skips synthesis)"
    )
    rec.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_recipe_flags(rec)

    demo = commands.add_parser("demo", help="launch the Gradio app (further flags go to demo/app.py, e.g. --data)")
    demo.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    demo.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    demo.add_argument(
        "app_args", nargs=argparse.REMAINDER, help="passed on to the app: --data, --teacher-dir, --device"
    )
    return parser


def _cmd_teachers(args: argparse.Namespace) -> int:
    ids = list_teachers(args.pattern)
    if not ids:
        raise ValueError(f"no teacher matches {args.pattern!r}; `dfkd teachers` lists them all")
    rows = [get_pretrained(i) for i in ids]
    if args.json:
        for r in rows:
            print(json.dumps({"id": r.id, "arch": r.arch, "family": r.family, "num_params": r.num_params,
                              "reported_acc": r.reported_acc, "normalization": r.normalization.as_dict(),
                              "license": r.license, "url": r.url}))  # fmt: skip
        return 0
    width = max(len(i) for i in ids)
    print(f"{'id':<{width}}  {'params':>10}  {'top-1':>6}  {'norm':<8}  license")
    for r in rows:
        norm = "imagenet" if r.normalization.mean[0] == 0.485 else "cifar10"
        print(f"{r.id:<{width}}  {r.num_params:>10,}  {r.reported_acc:>6.2f}  {norm:<8}  {r.license}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_eval_set
    from .evaluate import evaluate
    from .pipeline import resolve_device
    from .zoo import load_teacher

    device = resolve_device(args.device)
    teacher = load_teacher(args.teacher, arch=args.arch, normalization=args.normalization)
    data = load_eval_set(args.data)
    if len(data.classes) != teacher.num_classes:
        raise ValueError(
            f"{args.data!r} has {len(data.classes)} classes but the teacher predicts {teacher.num_classes}"
        )
    accuracy = evaluate(teacher.model.to(device), data, teacher.normalization, device=device)
    record = {"teacher": args.teacher, "arch": teacher.arch, "accuracy": round(accuracy, 2),
              "num_images": len(data), "dataset": data.name, "device": str(device)}  # fmt: skip
    print(
        json.dumps(record)
        if args.json
        else f"{args.teacher} ({teacher.arch}) on {data.name}: {accuracy:.2f}% top-1 over {len(data):,} images"
    )
    return 0


class _ProgressPrinter:
    """Turns pipeline events into tqdm bars (one per stage) and one line per measurement."""

    def __init__(self, quiet: bool):
        from tqdm.auto import tqdm

        self._tqdm, self.quiet, self.bar = tqdm, quiet, None

    def _write(self, line: str) -> None:
        self._tqdm.write(line, file=sys.stderr)

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            self._close()
            if event.total and not self.quiet:
                self.bar = self._tqdm(
                    total=event.total, desc=event.stage, unit="step", file=sys.stderr, dynamic_ncols=True
                )
            elif not self.quiet:
                self._write(f"[{event.stage}] {event.description}")
        elif isinstance(event, Progress) and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            if event.metrics:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in event.metrics.items()}, refresh=False)
        elif isinstance(event, MetricLogged) and not self.quiet:
            where = f" (epoch {event.step})" if event.stage == "distill" and event.name == "accuracy" else ""
            self._write(f"[{event.stage}] {event.name}{where}: {event.value:.2f}")
        elif isinstance(event, Notice):
            self._write(f"note: {event.message}")
        elif isinstance(event, StageFinished):
            self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def write_outputs(result: RecoveryResult, out: Path) -> list[Path]:
    """Write report.json, dreams.png/.pt, curves.png, sparsity.png and the recovered student.

    Files are written to a scratch folder first and moved into ``out`` only when all succeeded.
    """
    from .plots import dreams_figure, result_figure, sparsity_figure
    from .prune import clone_model, make_permanent
    from .zoo import save_checkpoint

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        report = result.report()
        (scratch / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        dreams_figure(result.dreams).savefig(scratch / "dreams.png", dpi=150)
        result.dreams.save(scratch / "dreams.pt")
        result_figure(result).savefig(scratch / "curves.png", dpi=120)
        sparsity_figure(result.layers).savefig(scratch / "sparsity.png", dpi=120)
        student = make_permanent(clone_model(result.student).cpu())
        save_checkpoint(scratch / "student.pt", student, result.teacher, sparsity=result.sparsity,
                        recovered_acc=result.recovered_acc, teacher_source=result.config.teacher)  # fmt: skip
        out.mkdir(exist_ok=True)
        written = []
        for file in sorted(scratch.iterdir()):
            os.replace(file, out / file.name)
            written.append(out / file.name)
        return written
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cmd_recover(args: argparse.Namespace) -> int:
    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {str(args.out)!r} exists and is not a directory")
    config = RecoveryConfig(
        teacher=args.teacher, data=args.data, sparsity=args.sparsity, scope=args.scope, recipe=_recipe_from_args(args),
        baselines=baselines, curve_per_class=args.curve_per_class, eval_per_class=args.eval_per_class,
        device=args.device, seed=args.seed, arch=args.arch, normalization=args.normalization,
    )  # fmt: skip
    dreams = DreamSet.load(args.dreams) if args.dreams else None
    printer = _ProgressPrinter(args.quiet)
    result = None
    try:
        for event in recover(config, dreams):
            printer(event)
            if isinstance(event, Finished):
                result = event.result
    finally:
        printer._close()
    assert result is not None
    written = write_outputs(result, args.out)
    noise = result.baselines.get("noise")
    real = result.baselines.get("real")
    print(
        f"teacher {result.teacher_acc:.2f}%  pruned {result.pruned_acc:.2f}%"
        + (f"  reconstructed {result.reconstructed_acc:.2f}%" if result.reconstructed_acc is not None else "")
        + f"  recovered {result.recovered_acc:.2f}%"
        + (f"  noise-KD {noise:.2f}%" if noise is not None else "")
        + (f"  real-data oracle {real:.2f}%" if real is not None else "")
        + f"  (sparsity {result.sparsity:.1%}, {result.timings['total']:.0f} s on {result.device})"
    )
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Start ``demo/app.py`` of the source checkout this package runs from (editable install)."""
    import importlib.util

    app = Path(__file__).resolve().parents[1] / "demo" / "app.py"
    if not app.is_file():
        raise ValueError(
            "the app ships with the source repository: clone it, `pip install -e '.[demo]'`, then `dfkd demo`"
        )
    if importlib.util.find_spec("gradio") is None:
        raise ValueError("the app needs Gradio: pip install -e '.[demo]'")
    spec = importlib.util.spec_from_file_location("dfkd_demo_app", app)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.main(["--host", args.host, "--port", str(args.port), *args.app_args])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"teachers": _cmd_teachers, "evaluate": _cmd_evaluate, "recover": _cmd_recover, "demo": _cmd_demo}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"dfkd {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"dfkd {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
