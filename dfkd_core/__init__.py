"""dfkd: recover the accuracy a pruned network lost, without a single real training image.

The method, top-down (one module per stage):

    zoo       load_teacher, list_teachers      a pretrained teacher (registry id or checkpoint)
    prune     prune_model, make_permanent      L1 magnitude pruning of weights, or of whole channels -> the student
              GradualPruning                   ... or a little more at each distillation epoch
    dream     dream, iter_dream                DeepInversion: a transfer set from BatchNorm statistics
    refit     refit, iter_refit                least-squares refit of each pruned layer on the dreams
    distill   distill, iter_distill            knowledge distillation from teacher to student on the dreams
    evaluate  evaluate, load_eval_set          top-1 on the held-out split (measuring only); size and CPU latency
    pipeline  recover, run_recovery            all of the above, as a stream of typed events
    outputs   write_outputs                    the files of a finished run

Example::

    import dfkd_core as dfkd
    result = dfkd.run_recovery(dfkd.RecoveryConfig("akamaster/resnet20", data="cifar10", sparsity=0.75))
    print(result.teacher_acc, result.pruned_acc, result.recovered_acc)
"""

from ._knobs import help_of
from ._version import __version__
from .architectures import create_model, list_architectures
from .data import ImageSet, load_eval_set
from .device import limit_threads, resolve_device, usable_cpus
from .distill import DistillConfig, distill, iter_distill
from .dream import DreamConfig, DreamSet, dream, iter_dream
from .evaluate import evaluate
from .events import (
    Event,
    Finished,
    ImagesReady,
    Metric,
    MetricLogged,
    Network,
    Notice,
    Progress,
    Stage,
    StageFinished,
    StageStarted,
)
from .outputs import write_outputs
from .pipeline import PRESETS, Recipe, RecoveryConfig, RecoveryResult, get_preset, recover, run_recovery, with_overrides
from .progress import ProgressBars
from .prune import GradualPruning, make_permanent, prune_model, sparsity_report
from .refit import RefitConfig, iter_refit, refit
from .zoo import Normalization, Teacher, list_teachers, load_checkpoint, load_teacher, save_checkpoint

__all__ = [
    "PRESETS",
    "DistillConfig",
    "DreamConfig",
    "DreamSet",
    "Event",
    "Finished",
    "GradualPruning",
    "ImageSet",
    "ImagesReady",
    "Metric",
    "MetricLogged",
    "Network",
    "Normalization",
    "Notice",
    "Progress",
    "ProgressBars",
    "Recipe",
    "RecoveryConfig",
    "RecoveryResult",
    "RefitConfig",
    "Stage",
    "StageFinished",
    "StageStarted",
    "Teacher",
    "__version__",
    "create_model",
    "distill",
    "dream",
    "evaluate",
    "get_preset",
    "help_of",
    "iter_distill",
    "iter_dream",
    "iter_refit",
    "list_architectures",
    "list_teachers",
    "load_checkpoint",
    "load_eval_set",
    "load_teacher",
    "make_permanent",
    "prune_model",
    "recover",
    "refit",
    "limit_threads",
    "resolve_device",
    "usable_cpus",
    "run_recovery",
    "save_checkpoint",
    "sparsity_report",
    "with_overrides",
    "write_outputs",
]
