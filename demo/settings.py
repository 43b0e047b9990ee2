"""What a user can set, in one place: the budgets and the table of controls.

:data:`CONTROLS` is the single description of every control on the page: its name (the
library's field name, so nothing is renamed on the way), label, kind, range and info text. The
page builds its components from it, :func:`parse_settings` checks values by it, and scripts
(:mod:`demo.timing`, :mod:`demo.screenshot`) fill it by name. Values travel as one
:class:`Settings` object, never by position: :func:`by_name` is the one place that turns Gradio's
positional inputs (the controls in table order) into names.

The recipe controls take their defaults and info text from the library: a budget's preset
gives the values, the recipe dataclasses' field help gives the descriptions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dfkd_core import PRESETS, Recipe, RecoveryConfig, get_preset, help_of, with_overrides
from dfkd_core.distill import LR_AUTO
from dfkd_core.prune import GRANULARITIES, check_sparsity

__all__ = [
    "BUDGETS",
    "CONTROLS",
    "CONTROL_NAMES",
    "RECIPE_CONTROLS",
    "Budget",
    "Control",
    "InputError",
    "MAX_WORK",
    "Settings",
    "by_name",
    "check_work",
    "describe_work_limit",
    "default_values",
    "parse_settings",
    "recipe_values",
    "work_of",
]


@dataclass(frozen=True)
class Budget:
    """A budget of the app: a library preset, plus how finely the live curve is measured and the GPU time it gets."""

    preset: str  # a key of dfkd_core.PRESETS, and the value the page sends
    label: str
    curve_per_class: int  # live accuracy on this many test images per class (the final numbers use all)
    # ZeroGPU seconds asked for the preset's own recipe on a ResNet-20 (scaled with the recipe controls). Spaces
    # multiplies the request by 1.5 on its current GPUs and refuses it beyond the visitor's daily quota (120 s
    # signed out, 300 s for a free account): Default must stay under 80 s. Estimates until measured on a GPU.
    gpu_seconds: int
    purpose: str
    needs_gpu: bool = False  # on a CPU the page warns that it takes long

    @property
    def recipe(self) -> Recipe:
        return PRESETS[self.preset]

    def describe(self) -> str:
        dream, distill = self.recipe.dream, self.recipe.distill
        refit = ", refit (weights)" if self.recipe.refit is not None else ""
        return (
            f"{self.label}: {dream.num_images:,} dreams x {dream.steps} steps{refit}, "
            f"{distill.epochs} distillation epochs ({self.purpose})"
        )


BUDGETS: dict[str, Budget] = {
    budget.preset: budget
    for budget in (
        Budget("quick", "Quick", 100, 45, "for a CPU"),
        Budget("default", "Default", 200, 75, "the recommended recipe"),
        Budget("best", "Best", 200, 150, "the most accurate recipe; for a GPU", needs_gpu=True),
    )
}


@dataclass(frozen=True)
class Control:
    """One control of the page: how it looks, its default and the rule its value must follow."""

    name: str  # the Settings field, and the library's field name for recipe controls
    label: str
    kind: str  # "dropdown", "slider", "radio", "number" or "text" (a number, or the word "auto")
    info: str = ""
    default: Any = None  # None: from the budget's preset (recipe controls) or from the deployment (choices)
    section: str | None = None  # the Recipe part ("dream", "distill") holding this field: a recipe control
    choices: tuple[str, ...] = ()  # fixed choices; the teacher's come from the deployment
    low: float | None = None  # the slider's range; for numbers, the accepted range
    high: float | None = None
    step: float | None = None  # the slider's grid
    whole: bool = False
    positive: bool = False  # must be above 0
    rule: Callable[[float], float] | None = None  # the library's own check (ValueError), used instead of the range
    advanced: bool = False  # shown in the collapsed "Advanced" panel

    @property
    def elem_id(self) -> str:
        """The component's HTML id, for the browser test and the screenshot script."""
        return self.name.replace("_", "-")

    def recipe_value(self, recipe: Recipe) -> Any:
        """This recipe control's value in ``recipe``."""
        assert self.section is not None, f"{self.name} is not a recipe control"
        return getattr(getattr(recipe, self.section), self.name)


def _recipe_help(section: str, name: str) -> str:
    """The library's one-line help of a recipe field, as a sentence."""
    text = help_of(type(getattr(Recipe(), section)), name)
    return text[:1].upper() + text[1:]


def _config_default(name: str) -> Any:
    """The default of a :class:`RecoveryConfig` field (the library's recommended value)."""
    return next(f.default for f in dataclasses.fields(RecoveryConfig) if f.name == name)


def _recipe_control(name: str, label: str, section: str, **rules: Any) -> Control:
    """A number control for a recipe field: its info text is the library's help of that field."""
    return Control(name, label, "number", info=_recipe_help(section, name), section=section, advanced=True, **rules)


# The page's controls, in the order they appear (and the order of the Run event's inputs).
CONTROLS: tuple[Control, ...] = (
    Control(
        "teacher",
        label="Teacher (pretrained on CIFAR-10)",
        kind="dropdown",
        info="Grouped by family: ResNet, VGG, MobileNet, then local checkpoints",
    ),
    Control(
        "sparsity",
        label="Sparsity",
        kind="slider",
        info="Fraction to remove: of the weights, or of the MACs (the work of one forward pass) for channels "
        "(at most about 0.75 for the ResNets)",
        default=_config_default("sparsity"),
        low=0.0,  # low, high and step: the slider's grid; the accepted range is the library's rule
        high=0.95,
        step=0.05,
        rule=check_sparsity,
    ),
    Control(
        "granularity",
        label="Prune",
        kind="radio",
        info="weight: single weights, as in the paper (same shape and speed) · channel: whole channels, with "
        "Torch-Pruning (a smaller network that runs faster), a few more at each distillation epoch",
        default=_config_default("granularity"),
        choices=GRANULARITIES,
    ),
    Control(
        "budget",
        label="Budget",
        kind="radio",
        info=" · ".join(budget.describe() for budget in BUDGETS.values()),
        choices=tuple(BUDGETS),
    ),
    _recipe_control("num_images", "Dream count", "dream", low=1, high=8_192, whole=True),
    _recipe_control("steps", "Dreaming steps per batch", "dream", low=1, high=2_000, whole=True),
    _recipe_control("epochs", "Distillation epochs", "distill", low=1, high=300, whole=True),
    Control(
        "lr",
        label="Distillation learning rate",
        kind="text",
        info=_recipe_help("distill", "lr") + " (or a number, at most 1)",
        section="distill",
        high=1.0,
        positive=True,
        advanced=True,
    ),
    Control(
        "seed",
        label="Seed",
        kind="number",
        info="Seeds pruning ties, the dreams' starting noise and the augmentation",
        default=_config_default("seed"),
        low=0,
        high=2**31 - 1,
        whole=True,
    ),
)
CONTROL_NAMES: tuple[str, ...] = tuple(control.name for control in CONTROLS)
RECIPE_CONTROLS: tuple[Control, ...] = tuple(control for control in CONTROLS if control.section)


@dataclass(frozen=True)
class Settings:
    """The values of the page's controls, checked (fields: :data:`CONTROL_NAMES`, in that order)."""

    teacher: str  # registry id or local checkpoint path
    sparsity: float
    granularity: str  # "weight" or "channel"
    budget: str  # a key of BUDGETS
    num_images: int
    steps: int
    epochs: int
    lr: float | str  # a number, or "auto": chosen by probe runs on held-out dreams
    seed: int

    def recipe(self) -> Recipe:
        """The budget's preset with the recipe controls applied."""
        overrides = {
            section: {c.name: getattr(self, c.name) for c in RECIPE_CONTROLS if c.section == section}
            for section in ("dream", "distill")
        }
        preset = get_preset(self.budget, self.granularity)  # channels: pruned gradually
        return with_overrides(preset, **overrides)


class InputError(ValueError):
    """A control holds a value the run cannot use; the message names the control by its label."""


# The most work one run may ask for, in image-steps: dreams x (dreaming steps + distillation epochs). On a CPU,
# the Best budget (2,048 x 260 = 532,480, about 35 minutes on two cores) fits; a GPU allows eight times that.
MAX_WORK = {"cpu": 600_000, "gpu": 4_800_000}


def work_of(settings: Settings) -> int:
    """A run's work in image-steps: every dream is optimized ``steps`` times and seen once per epoch."""
    return settings.num_images * (settings.steps + settings.epochs)


def describe_work_limit(on_gpu: bool) -> str:
    """The work cap as the page states it."""
    limit = MAX_WORK["gpu" if on_gpu else "cpu"]
    best = BUDGETS["best"].recipe
    return (
        f"One run may do at most {limit:,} image-steps: dream count x (dreaming steps + distillation epochs). "
        f"Best is {best.dream.num_images * (best.dream.steps + best.distill.epochs):,}."
    )


def check_work(settings: Settings, on_gpu: bool) -> Settings:
    """``settings`` if their work fits this device's cap; :class:`InputError` saying what to lower otherwise."""
    limit = MAX_WORK["gpu" if on_gpu else "cpu"]
    work = work_of(settings)
    if work > limit:
        raise InputError(
            f"Dream count x (dreaming steps + distillation epochs) = {settings.num_images:,} x "
            f"{settings.steps + settings.epochs:,} = {work:,} image-steps, above this app's limit of {limit:,} on "
            f"{'a GPU' if on_gpu else 'a CPU'}. Lower the dream count, the steps or the epochs."
        )
    return settings


def by_name(values: Sequence[Any]) -> dict[str, Any]:
    """Gradio's positional input values (in :data:`CONTROL_NAMES` order) as ``{name: value}``."""
    if len(values) != len(CONTROL_NAMES):
        raise ValueError(f"expected {len(CONTROL_NAMES)} control values, got {len(values)}")
    return dict(zip(CONTROL_NAMES, values))


def recipe_values(budget: str) -> list[Any]:
    """The recipe controls' values in a budget's preset, in :data:`RECIPE_CONTROLS` order."""
    return [control.recipe_value(BUDGETS[budget].recipe) for control in RECIPE_CONTROLS]


def default_values(budget: str, teacher: str) -> dict[str, Any]:
    """Every control's starting value: the table's defaults, the budget's recipe, and the given choices."""
    values = {control.name: control.default for control in CONTROLS}
    values.update(zip((control.name for control in RECIPE_CONTROLS), recipe_values(budget)))
    return {**values, "budget": budget, "teacher": teacher}


def _number(value: Any, label: str) -> float:
    """``value`` as a finite float, or :class:`InputError` naming the control by ``label``."""
    if value is None or value == "":
        raise InputError(f"{label} is empty: enter a number.")
    if isinstance(value, bool):  # True is an int to Python, not a number to a visitor
        raise InputError(f"{label} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise InputError(f"{label} must be a finite number, got {value!r}.")
    return number


def _checked_number(control: Control, value: Any) -> float | int:
    """A number control's value, or :class:`InputError` naming the control."""
    number = _number(value, control.label)
    if control.rule is not None:
        try:
            return control.rule(number)
        except ValueError as err:
            raise InputError(f"{control.label}: {err}.") from None
    if control.whole:
        if number != int(number) or not control.low <= number <= control.high:  # type: ignore[operator]
            raise InputError(
                f"{control.label} must be a whole number from {control.low:,} to {control.high:,}, got {value!r}."
            )
        return int(number)
    if control.positive and number <= 0:
        raise InputError(f"{control.label} must be above 0, got {value!r}.")
    if control.low is not None and number < control.low:
        raise InputError(f"{control.label} must be at least {control.low:g}, got {value!r}.")
    if control.high is not None and number > control.high:
        raise InputError(f"{control.label} must be at most {control.high:g}, got {value!r}.")
    return number


def _checked_choice(control: Control, value: Any, choices: Collection[str]) -> str:
    """A dropdown's or radio's value, or :class:`InputError` naming the control."""
    if not value:
        raise InputError(f"{control.label}: pick one from the list first.")
    if value not in choices:
        raise InputError(f"{control.label}: {value!r} is not one of the choices; pick one from the list.")
    return str(value)


def parse_settings(values: Mapping[str, Any], choices: Mapping[str, Collection[str]]) -> Settings:
    """Check every control's value by the table; :class:`InputError` names the first bad one by its label.

    ``choices`` gives the choices the deployment decides (the teacher's); the others are the table's.
    """
    parsed: dict[str, Any] = {}
    for control in CONTROLS:
        value = values.get(control.name)
        if control.kind in ("dropdown", "radio"):
            parsed[control.name] = _checked_choice(control, value, choices.get(control.name, control.choices))
        elif control.kind == "text" and str(value).strip().lower() == LR_AUTO:
            parsed[control.name] = LR_AUTO
        else:
            parsed[control.name] = _checked_number(control, value)
    return Settings(**parsed)
