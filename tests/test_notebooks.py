"""The tutorial notebooks: committed clean, parameterized by the environment, and each one runs
top to bottom in SMOKE mode on the real assets and draws its pictures. The SMOKE budget is defined
once, in ``notebooks/smoke.py``, and pictures of a SMOKE run are never saved for show.

Execution uses the same helpers as ``notebooks/notebook_tools.py`` (nbclient + ipykernel), with
``DFKD_SMOKE=1`` and the teacher and data of ``../shared`` passed through environment variables,
exactly as a user would point the notebooks at local files. No network is needed.
"""

from __future__ import annotations

import importlib.util
import json
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
    "01_pruning_damage": 2,  # global vs layer-wise per layer, the accuracy cliff
    "02_dreaming_with_deepinversion": 4,  # dream grid, loss-term grids, teacher confidence, nearest training image
    "03_recovering_the_pruned_student": 1,  # accuracy per epoch against the four references
    "04_bring_your_own_model": 1,  # your model before/after
}


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
    pytest.importorskip("nbformat")
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
    assert "from smoke import" in _source(parameters[0]), f"{name}: SMOKE must come from smoke.py, defined once"
    figures = [c for c in code if "figure" in c.get("metadata", {}).get("tags", [])]
    assert len(figures) >= MIN_FIGURES[name]
    assert code[-1] is figures[-1], f"{name} must end with a picture"
    everything = "\n".join(_source(c) for c in cells)
    assert "../shared" not in everything and "/work/" not in everything
    assert 'environ.get("DFKD_SMOKE"' not in everything, f"{name} reads DFKD_SMOKE itself instead of smoke.py"
    if name != "01_pruning_damage":  # 02-04 run library stages: their events are drawn as the CLI draws them
        assert "dfkd.ProgressBars()" in everything and "tqdm" not in everything, f"{name}: use dfkd.ProgressBars()"


def test_smoke_budget_is_defined_once(monkeypatch):
    """smoke.py reads DFKD_SMOKE and shrinks a recipe's budgets, keeping its other choices (the refit)."""
    import dfkd_core as dfkd

    monkeypatch.setenv("DFKD_SMOKE", "1")
    spec = importlib.util.spec_from_file_location("smoke", NOTEBOOK_DIR / "smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    assert smoke.SMOKE is True
    for name in dfkd.PRESETS:
        recipe = dfkd.get_preset(name)
        small = smoke.smoke_recipe(recipe)
        assert small.dream.num_images * small.dream.steps < recipe.dream.num_images * recipe.dream.steps
        assert small.distill.epochs < recipe.distill.epochs
        assert (small.refit is None) == (recipe.refit is None)


def test_execute_refuses_to_save_pictures_of_a_smoke_run(tmp_path, monkeypatch, capsys):
    """SMOKE pictures (a handful of dreams, 20 test images per class) mislead; --images refuses them."""
    pytest.importorskip("nbformat")
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


@pytest.mark.assets
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_in_smoke_mode_and_draws(name, decoded_cache, tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("ipywidgets")
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

    # The timeout guards against a hanging cell only: wall time on a shared 2-core machine is not a test.
    nb, _ = tools.execute(NOTEBOOK_DIR / f"{name}.ipynb", tools.kernel_environment(smoke=True), timeout=900)

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    figures = tools.figure_cells(nb)
    assert len(figures) >= MIN_FIGURES[name]
    for i in figures:
        assert tools.images_of(nb.cells[i]), f"{name}: cell {i} (tagged 'figure') drew no picture"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    printed = "".join(o.get("text", "") for o in first_code.outputs if o.get("output_type") == "stream")
    assert "SMOKE=True" in printed, f"{name} did not run in SMOKE mode: {printed!r}"
