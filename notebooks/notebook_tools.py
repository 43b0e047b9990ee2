"""Keep the tutorial notebooks clean, and run them.

    python notebooks/notebook_tools.py strip             # clear outputs in place (do this before committing)
    python notebooks/notebook_tools.py check             # exit 1 if a notebook carries outputs
    python notebooks/notebook_tools.py execute --smoke   # run all four top to bottom, tiny budgets
    python notebooks/notebook_tools.py execute --images DIR   # a full run, saving each closing picture

Notebooks are committed without outputs. ``execute`` writes executed copies to ``--out``
(default ``notebooks/executed/``, ignored by git) and never touches the committed files; with
``--images DIR`` it also saves each notebook's closing picture (its last cell tagged ``figure``)
as ``DIR/<notebook name>.png``. It refuses to save pictures of a SMOKE run: their numbers come from
a handful of dreams and test images and would mislead anyone who sees them out of context.
Teacher, data and budget come from the environment, as in the notebooks' parameter cells:
``DFKD_TEACHER``, ``DFKD_DATA``, ``DFKD_DEVICE``, ``DFKD_PRESET``, ``DFKD_SMOKE`` (``--smoke``
sets it; its budget is defined in ``notebooks/tutorial.py``), ``DFKD_DATA_DIR``, ``TORCH_HOME``.
Needs ``nbformat``, ``nbclient`` and ``ipykernel`` (``pip install -e ".[dev]"``).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
NOTEBOOKS = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
FIGURE_TAG = "figure"  # cells whose output must contain a picture
WIDGET_STATE = "widgets"  # notebook metadata key where executed widget state is stored


def outputs_left(nb: nbformat.NotebookNode) -> list[str]:
    """Descriptions of everything in ``nb`` that a stripped notebook must not carry."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {i}: {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"cell {i}: execution count {cell.execution_count}")
        extra = set(cell.metadata) - {"tags"}
        if extra:
            found.append(f"cell {i}: metadata {sorted(extra)}")
    if WIDGET_STATE in nb.metadata:
        found.append("notebook metadata: stored widget state")
    if set(nb.metadata.get("language_info", {})) - {"name"}:
        found.append("notebook metadata: language_info of the kernel that ran it")
    return found


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs, execution counts, widget state, cell metadata other than tags and the details
    of the kernel that ran the notebook (in place)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
    nb.metadata.pop(WIDGET_STATE, None)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def kernel_environment(smoke: bool | None = None) -> dict[str, str]:
    """The environment of the notebook kernel: this one, with this interpreter first on PATH (so the
    ``python3`` kernel runs where dfkd is installed), inline matplotlib, and DFKD_SMOKE when asked."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("MPLBACKEND", None)  # a non-inline backend (e.g. Agg) would swallow the pictures
    if smoke is not None:
        env["DFKD_SMOKE"] = "1" if smoke else "0"
    return env


def execute(
    path: Path, env: dict[str, str] | None = None, timeout: int = 1200, folder: Path | None = None
) -> tuple[nbformat.NotebookNode, float]:
    """Run a notebook top to bottom in ``folder`` (default: its own, where ``tutorial.py`` lies); raises
    ``nbclient.exceptions.CellExecutionError`` on the first failing cell. Returns the executed notebook
    and the wall time in seconds."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder or path.parent)}}
    )
    started = time.perf_counter()
    client.execute(env=env if env is not None else kernel_environment())
    return nb, time.perf_counter() - started


def figure_cells(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of the cells tagged ``figure``: each must show a picture once executed."""
    return [i for i, c in enumerate(nb.cells) if FIGURE_TAG in c.metadata.get("tags", [])]


def images_of(cell: nbformat.NotebookNode) -> list[bytes]:
    """The PNG pictures among a cell's outputs."""
    return [base64.b64decode(o.data["image/png"]) for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


def _selected(names: list[str]) -> list[Path]:
    return [Path(n).resolve() for n in names] if names else NOTEBOOKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("strip", "clear outputs in place"), ("check", "fail if a notebook carries outputs")):
        commands.add_parser(name, help=text).add_argument("notebooks", nargs="*", help="default: all four")
    run = commands.add_parser("execute", help="run notebooks top to bottom into --out")
    run.add_argument("notebooks", nargs="*", help="default: all four")
    run.add_argument("--smoke", action="store_true", help="DFKD_SMOKE=1: tiny budgets, about a minute each on a CPU")
    run.add_argument("--out", type=Path, default=HERE / "executed", help="folder for the executed copies")
    run.add_argument(
        "--images", type=Path, help="also save each notebook's closing picture here as <name>.png (not in SMOKE mode)"
    )
    run.add_argument("--timeout", type=int, default=1200, help="seconds allowed per cell")
    args = parser.parse_args(argv)

    paths = _selected(args.notebooks)
    if args.command == "strip":
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            if outputs_left(nb):
                nbformat.write(strip(nb), path)
                print(f"stripped {path.name}")
        return 0
    if args.command == "check":
        dirty = {path.name: outputs_left(nbformat.read(path, as_version=4)) for path in paths}
        dirty = {name: found for name, found in dirty.items() if found}
        for name, found in dirty.items():
            print(f"{name} carries outputs ({'; '.join(found[:3])}); run: python notebooks/notebook_tools.py strip")
        return 1 if dirty else 0

    env = kernel_environment(smoke=True if args.smoke else None)
    if args.images and env.get("DFKD_SMOKE") == "1":
        parser.error(
            "--images refuses to save pictures of a SMOKE run (DFKD_SMOKE=1): their numbers come from a handful "
            "of dreams and test images and mislead out of context; run without --smoke and with DFKD_SMOKE unset"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0.0
    for path in paths:
        nb, seconds = execute(path, env, args.timeout)
        total += seconds
        nbformat.write(nb, args.out / path.name)
        print(f"{path.name}: {seconds:.1f} s -> {args.out / path.name}")
        if args.images:
            args.images.mkdir(parents=True, exist_ok=True)
            pictures = [image for i in figure_cells(nb) for image in images_of(nb.cells[i])]
            if not pictures:
                raise SystemExit(f"{path.name} produced no picture in a cell tagged {FIGURE_TAG!r}")
            (args.images / f"{path.stem}.png").write_bytes(pictures[-1])
            print(f"    closing picture -> {args.images / (path.stem + '.png')}")
    print(f"all {len(paths)} notebooks in {total:.1f} s (DFKD_SMOKE={env.get('DFKD_SMOKE', '0')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
