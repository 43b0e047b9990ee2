"""The files of a finished run, written all or nothing (used by the CLI and the app alike)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .plots import dreams_figure, result_figure, sparsity_figure
from .prune import clone_model, make_permanent
from .zoo import file_sha256, save_checkpoint

if TYPE_CHECKING:
    from .pipeline import RecoveryResult

__all__ = ["OUTPUT_FILES", "check_output_dir", "shareable", "write_outputs"]

OUTPUT_FILES = {
    "report.json": "every accuracy, timing, setting and package version of the run",
    "dreams.png": "a labelled grid of the dreams, one row per class",
    "dreams.pt": "the dreams themselves (reuse them with --dreams)",
    "curves.png": "accuracy per distillation epoch against the teacher, the pruned network and the baselines",
    "sparsity.png": "the share of weights removed in every layer",
    "student.pt": "the recovered student, pruning made permanent, loadable without flags",
}


def check_output_dir(out: str | os.PathLike[str], data: str | None = None) -> Path:
    """``out`` as a Path, after probing that the files of a run can be written there and that they would not land
    in the evaluation folder ``data`` (they would join what is measured); ``ValueError`` if not.

    Nothing is created: the nearest existing folder on the way is probed with a scratch file, so a
    bad ``--out`` is found before a run, not after it.
    """
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise ValueError(f"output folder {str(out)!r} is a link to nothing ({os.readlink(out)!r})")
    if data and Path(data).expanduser().is_dir():
        root, where = Path(data).expanduser().resolve(), out.resolve()
        if where == root or root in where.parents:
            raise ValueError(
                f"output folder {str(out)!r} lies inside the evaluation data {data!r}: its files would join what "
                "is measured; choose an --out outside it"
            )
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {str(out)!r} exists and is not a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"output folder {str(out)!r} cannot be made: {str(existing)!r} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ValueError(f"output folder {str(out)!r} is not writable ({err.strerror or err})") from None
    return out


SERVER_DETAILS = ("platform", "git_commit")  # report keys that describe the machine, not the run: a server keeps them


def shareable(report: Any) -> Any:
    """``report`` as a stranger may see it (the app's downloads): every file path reduced to its name, and the
    machine's platform and checkout left out. What reproduces the run (hashes, settings, versions) stays."""
    if isinstance(report, dict):
        return {k: shareable(v) for k, v in report.items() if k not in SERVER_DETAILS}
    if isinstance(report, list):
        return [shareable(v) for v in report]
    if isinstance(report, str) and (os.path.isabs(report) or report.startswith(("./", "../", "~"))):
        return Path(report).name
    return report


def write_outputs(result: RecoveryResult, out: str | os.PathLike[str], public: bool = False) -> list[Path]:
    """Write the files of :data:`OUTPUT_FILES` into ``out``; returns their paths. ``public``: files a stranger
    downloads (the app's), with no path of this machine in them (:func:`shareable`).

    Files are written to a scratch folder first and moved into ``out`` only when all succeeded.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        result.dreams.save(scratch / "dreams.pt")
        report = shareable(result.report()) if public else result.report()
        report["dreams"]["saved_sha256"] = file_sha256(scratch / "dreams.pt")  # dreams.pt beside it, resumed or not
        (scratch / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        dreams_figure(result.dreams).savefig(scratch / "dreams.png", dpi=150)
        result_figure(result).savefig(scratch / "curves.png", dpi=120)
        sparsity_figure(result.layers).savefig(scratch / "sparsity.png", dpi=120)
        student = make_permanent(clone_model(result.student).cpu())
        save_checkpoint(
            scratch / "student.pt",
            student,
            result.teacher,
            sparsity=result.sparsity,
            recovered_acc=result.recovered_acc,
            teacher_source=shareable(result.config.teacher) if public else result.config.teacher,
        )
        out.mkdir(exist_ok=True)
        written = []
        for name in OUTPUT_FILES:
            os.replace(scratch / name, out / name)
            written.append(out / name)
        return written
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
