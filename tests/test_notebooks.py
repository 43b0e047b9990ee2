"""The tutorial notebooks: committed clean, parameterized by the environment, with learning goals
and exercises, and each one runs top to bottom in SMOKE mode on the real assets and draws its
pictures, every one titled with the SMOKE mark. What the notebooks share (the SMOKE budget, the
recipe, the event display) is defined once, in ``notebooks/tutorial.py``, and pictures of a SMOKE
run are never saved for show.

Execution uses the same helpers as ``notebooks/notebook_tools.py`` (nbclient + ipykernel), with
``DFKD_SMOKE=1`` and the teacher and data of ``../shared`` passed through environment variables,
exactly as a user would point the notebooks at local files. No network is needed.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from .conftest import shared_asset

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = [
    "01_pruning_damage",
    "02_dreaming_with_deepinversion",
    "03_recovering_the_pruned_student",
    "04_bring_your_own_model",
]
# Pictures each notebook must draw: cells tagged "figure" (per notebook, at least this many).
MIN_FIGURES = {
    "01_pruning_damage": 3,  # weight histograms at the threshold, global vs layer-wise per layer, the accuracy cliff
    "02_dreaming_with_deepinversion": 6,  # strip and grid, first BatchNorm layer, ablation, confidence, privacy x2
    "03_recovering_the_pruned_student": 2,  # BatchNorm recalibration, accuracy per epoch against the references
    "04_bring_your_own_model": 1,  # your model before/after
}
# Run first in the executed copy: records the titles of every figure the kernel renders, one JSON list per line.
TITLE_RECORDER = """
import json as _json
from matplotlib.backend_bases import FigureCanvasBase as _Canvas

_print_figure = _Canvas.print_figure


def _recording(self, *args, **kwargs):
    figure = self.figure
    titles = [figure._suptitle.get_text() if figure._suptitle else ""]
    titles += [ax.get_title(loc) for ax in figure.axes for loc in ("center", "left", "right")]
    with open({log!r}, "a") as log:
        log.write(_json.dumps([t for t in titles if t]) + "\\n")
    return _print_figure(self, *args, **kwargs)


_Canvas.print_figure = _recording
"""


def _load_tools():
    spec = importlib.util.spec_from_file_location("notebook_tools", NOTEBOOK_DIR / "notebook_tools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(name: str) -> dict:
    return json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_the_four_notebooks_exist():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_notebook_has_no_outputs(name):
    import nbformat

    found = _load_tools().outputs_left(nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4))
    assert not found, f"{name} carries outputs {found}; run: python notebooks/notebook_tools.py strip"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_structure(name):
    """A story in markdown, a parameter cell driven by the environment, a picture at the end, and no
    machine-specific paths (assets come from the registry, the cache or environment variables)."""
    cells = _read(name)["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).startswith("# ")
    assert sum(c["cell_type"] == "markdown" for c in cells) >= 4
    parameters = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(parameters) == 1 and parameters[0] is code[0], "the first code cell is the one parameter cell"
    for variable in ("DFKD_SMOKE", "DFKD_DEVICE", "DFKD_TEACHER", "DFKD_DATA"):
        assert variable in _source(parameters[0]), f"{name}: the parameter cell does not read {variable}"
    assert "from tutorial import" in _source(parameters[0]), f"{name}: SMOKE must come from tutorial.py, defined once"
    figures = [c for c in code if "figure" in c.get("metadata", {}).get("tags", [])]
    assert len(figures) >= MIN_FIGURES[name]
    assert code[-1] is figures[-1], f"{name} must end with a picture"
    everything = "\n".join(_source(c) for c in cells)
    assert "../shared" not in everything and "/work/" not in everything
    assert 'environ.get("DFKD_SMOKE"' not in everything, f"{name} reads DFKD_SMOKE itself instead of tutorial.py"
    assert "smoke_recipe(" not in everything, f"{name}: the SMOKE recipe is applied by tutorial.chosen_recipe"
    assert "make_grid" not in everything, f"{name}: dream grids come from dfkd_core.plots"
    if name != "01_pruning_damage":  # 02-04 run library stages: one display of events for all (tutorial.Watch)
        assert "Watch(" in everything and "tqdm" not in everything, f"{name}: show events with tutorial.Watch"
        assert "ProgressBars()" not in everything, f"{name}: tutorial.Watch is the one event display"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_has_goals_and_exercises(name):
    """Learning goals right after the title, and 3-5 exercises at the end, each saying what to expect."""
    cells = [_source(c) for c in _read(name)["cells"]]
    assert cells[1].startswith("## Learning goals") and cells[1].count("\n* ") >= 3, f"{name}: goals come second"
    exercises = [i for i, c in enumerate(cells) if "## Exercises" in c]
    assert len(exercises) == 1 and exercises[0] >= len(cells) - 2, f"{name}: one exercises cell, at the end"
    exercises = [cells[exercises[0]]]
    items = re.split(r"\n\d\. ", exercises[0].split("## Exercises", 1)[1])[1:]
    assert 3 <= len(items) <= 5, f"{name}: {len(items)} exercises"
    for item in items:
        assert "*Expect*" in item, f"{name}: an exercise does not say what to expect: {item[:80]!r}"


@pytest.mark.parametrize("name", EXPECTED)
def test_no_cell_rebinds_a_function_of_another(name):
    """Every cell stays safe to re-run: a top-level ``def`` is never shadowed by a later assignment, so a
    slider or an earlier cell run again after Run All still finds the function it calls."""
    import ast

    cells = [c for c in _read(name)["cells"] if c["cell_type"] == "code"]
    trees = [ast.parse("\n".join(line for line in _source(c).splitlines() if not line.startswith("%"))) for c in cells]
    functions = {node.name for tree in trees for node in tree.body if isinstance(node, ast.FunctionDef)}
    rebound = {
        target.id
        for tree in trees
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.For | ast.With)
        for target in ast.walk(node)
        if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store)
    }
    assert not functions & rebound, f"{name}: {sorted(functions & rebound)} defined as a function and assigned"


@pytest.mark.parametrize("name", EXPECTED)
def test_no_cell_reads_a_name_that_only_a_later_cell_defines(name):
    """Run top to bottom, a cell finds every name it reads in itself or in a cell above it: a name first
    defined further down only exists when the cells ran out of order (a stale kernel, not the notebook)."""
    import ast
    import builtins

    cells = [c for c in _read(name)["cells"] if c["cell_type"] == "code"]
    trees = [ast.parse("\n".join(line for line in _source(c).splitlines() if not line.startswith("%"))) for c in cells]

    def defined(tree: ast.AST) -> set[str]:
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        names |= {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
        names |= {
            (alias.asname or alias.name).split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for alias in n.names
        }
        return names

    known = set(dir(builtins)) | {"display", "get_ipython"}
    later_only = []
    for i, tree in enumerate(trees):
        known |= defined(tree)
        read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        later = set().union(*(defined(t) for t in trees[i + 1 :])) if i + 1 < len(trees) else set()
        later_only += [(i, n) for n in sorted(read - known) if n in later]
    assert not later_only, f"{name}: (code cell, name) read before any cell above defines it: {later_only}"


def _tutorial(monkeypatch, **environment):
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("tutorial", NOTEBOOK_DIR / "tutorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_budget_is_defined_once(monkeypatch):
    """tutorial.py reads DFKD_SMOKE and shrinks a recipe's budgets, keeping its other choices (the refit)."""
    import dfkd_core as dfkd

    monkeypatch.delenv("DFKD_PRESET", raising=False)
    tutorial = _tutorial(monkeypatch, DFKD_SMOKE="1")
    assert tutorial.SMOKE is True
    for name in dfkd.PRESETS:
        recipe = dfkd.get_preset(name)
        small = tutorial.smoke_recipe(recipe)
        assert small.dream.num_images * small.dream.steps < recipe.dream.num_images * recipe.dream.steps
        assert small.distill.epochs < recipe.distill.epochs
        assert (small.refit is None) == (recipe.refit is None)
    cpu, gpu = dfkd.resolve_device("cpu"), type("Device", (), {"type": "cuda"})()
    assert tutorial.chosen_recipe(cpu) == ("quick", tutorial.smoke_recipe(dfkd.get_preset("quick")))
    assert tutorial.chosen_recipe(gpu)[0] == "default"
    assert tutorial.marked("a title").startswith(f"[{tutorial.SMOKE_MARK}]")

    tutorial = _tutorial(monkeypatch, DFKD_SMOKE="0", DFKD_PRESET="best")
    assert tutorial.chosen_recipe(cpu) == ("best", dfkd.get_preset("best"))
    assert tutorial.marked("a title") == "a title"


def test_binomial_error_is_the_95_percent_interval(monkeypatch):
    tutorial = _tutorial(monkeypatch, DFKD_SMOKE="0")
    assert tutorial.binomial_error(50.0, 10_000) == pytest.approx(0.98, abs=0.01)
    assert tutorial.binomial_error(85.0, 2000) == pytest.approx(1.56, abs=0.01)
    assert tutorial.binomial_error(100.0, 500) == 0.0


def test_stage_by_stage_runs_each_stage_once(monkeypatch):
    """A cell run twice gets its stage again and runs nothing more; a skipped stage is a clear error."""
    import dfkd_core as dfkd
    from dfkd_core.events import Stage, StageFinished

    tutorial = _tutorial(monkeypatch, DFKD_SMOKE="0")
    pulled = []

    def run():
        for stage in (Stage.LOAD, Stage.PRUNE, Stage.DREAM):
            pulled.append(stage)
            yield StageFinished(stage, 0.0, {})
        yield dfkd.Finished("the result")
        return "the result"

    class Quiet(list):
        def __call__(self, event):
            self.append(event)

    seen = Quiet()
    stages = tutorial.StageByStage(run(), seen)
    assert stages.until(Stage.PRUNE).stage is Stage.PRUNE and pulled == [Stage.LOAD, Stage.PRUNE]
    assert stages.until(Stage.LOAD).stage is Stage.LOAD and stages.until(Stage.PRUNE).stage is Stage.PRUNE
    assert pulled == [Stage.LOAD, Stage.PRUNE], "asking again ran the pipeline on"
    assert stages.until() == "the result" and stages.until() == "the result"
    with pytest.raises(ValueError, match="refit"):
        stages.until(Stage.REFIT)
    assert len(seen) == 4


def test_execute_refuses_to_save_pictures_of_a_smoke_run(tmp_path, monkeypatch, capsys):
    """SMOKE pictures (a handful of dreams, 20 test images per class) mislead; --images refuses them."""
    tools = _load_tools()
    monkeypatch.delenv("DFKD_SMOKE", raising=False)
    with pytest.raises(SystemExit) as refused:
        tools.main(["execute", "--smoke", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out")])
    assert refused.value.code == 2 and "SMOKE" in capsys.readouterr().err
    monkeypatch.setenv("DFKD_SMOKE", "1")
    with pytest.raises(SystemExit):
        tools.main(["execute", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "images").exists() and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def decoded_cache(tmp_path_factory) -> Path:
    """One dataset cache for all notebooks, so the JPEG test split is decoded once."""
    return tmp_path_factory.mktemp("notebook-cache")


@pytest.mark.slow
@pytest.mark.assets
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_in_smoke_mode_and_draws(name, decoded_cache, tmp_path, monkeypatch):
    import nbformat  # nbformat, nbclient, ipykernel and ipywidgets come with the dev extra: never skipped

    tools = _load_tools()
    teacher = shared_asset("weights/cifar10-jpeg-teachers/resnet20-12fca82f-jpeg.pt")
    data = shared_asset("data/cifar10-jpeg")
    for key in ("DFKD_PRESET", "DFKD_MY_CHECKPOINT", "DFKD_MY_ARCH", "DFKD_MY_NORMALIZATION", "DFKD_MY_DATA"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DFKD_TEACHER", str(teacher))
    monkeypatch.setenv("DFKD_DATA", str(data))
    monkeypatch.setenv("DFKD_DATA_DIR", str(decoded_cache))
    monkeypatch.setenv("DFKD_WORK", str(tmp_path))
    monkeypatch.setenv("DFKD_DEVICE", "cpu")

    # A copy with the title recorder first, run in the notebooks' folder (where tutorial.py lies).
    titles = tmp_path / "titles.jsonl"
    copy = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    copy.cells.insert(0, nbformat.v4.new_code_cell(TITLE_RECORDER.format(log=str(titles))))
    nbformat.write(copy, tmp_path / f"{name}.ipynb")
    # The timeout guards against a hanging cell only: wall time on a shared 2-core machine is not a test.
    nb, _ = tools.execute(
        tmp_path / f"{name}.ipynb", tools.kernel_environment(smoke=True), timeout=900, folder=NOTEBOOK_DIR
    )

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    figures = tools.figure_cells(nb)
    assert len(figures) >= MIN_FIGURES[name]
    for i in figures:
        assert tools.images_of(nb.cells[i]), f"{name}: cell {i} (tagged 'figure') drew no picture"
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    printed = "".join(o.get("text", "") for o in parameters.outputs if o.get("output_type") == "stream")
    assert "SMOKE=True" in printed, f"{name} did not run in SMOKE mode: {printed!r}"
    rendered = [json.loads(line) for line in titles.read_text().splitlines()]
    assert len(rendered) >= MIN_FIGURES[name]
    unmarked = [t for t in rendered if not any("SMOKE" in title for title in t)]
    assert not unmarked, f"{name}: figures of a SMOKE run without the SMOKE mark in their title: {unmarked}"
