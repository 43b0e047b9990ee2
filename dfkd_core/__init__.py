"""dfkd: recover the accuracy a pruned network lost, without a single real training image.

The method, top-down (one module per stage):

    zoo        load_teacher, list_teachers          a pretrained teacher (registry id or checkpoint)
    prune      prune_model, make_permanent          global L1 magnitude pruning -> the student
    invert     synthesize                           DeepInversion dreams from BatchNorm statistics
    reconstruct reconstruct                         refit each pruned layer to the teacher's on the dreams
    distill    distill                              KD from teacher to pruned student on the dreams
    evaluate   evaluate, load_eval_set              top-1 on the held-out split (measuring only)
    pipeline   recover, run_recovery                all of the above, as a stream of events

Example::

    import dfkd_core as dfkd
    result = dfkd.run_recovery(dfkd.RecoveryConfig("akamaster/resnet20", data="cifar10", sparsity=0.75))
    print(result.teacher_acc, result.pruned_acc, result.recovered_acc)
"""

__version__ = "0.1.0"

from .architectures import create_model, list_architectures
from .data import ImageSet, load_eval_set
from .distill import DistillConfig, distill
from .evaluate import evaluate
from .events import Event, Finished, ImagesReady, MetricLogged, Notice, Progress, StageFinished, StageStarted
from .invert import DreamSet, InversionConfig, synthesize
from .pipeline import PRESETS, Recipe, RecoveryConfig, RecoveryResult, recover, run_recovery
from .prune import make_permanent, prune_model, sparsity_report
from .reconstruct import ReconstructionConfig, reconstruct
from .zoo import Normalization, Teacher, list_teachers, load_checkpoint, load_teacher, save_checkpoint

__all__ = [
    "PRESETS",
    "DistillConfig",
    "DreamSet",
    "Event",
    "Finished",
    "ImageSet",
    "ImagesReady",
    "InversionConfig",
    "MetricLogged",
    "Normalization",
    "Notice",
    "Progress",
    "Recipe",
    "ReconstructionConfig",
    "RecoveryConfig",
    "RecoveryResult",
    "StageFinished",
    "StageStarted",
    "Teacher",
    "__version__",
    "create_model",
    "distill",
    "evaluate",
    "list_architectures",
    "list_teachers",
    "load_checkpoint",
    "load_eval_set",
    "load_teacher",
    "make_permanent",
    "prune_model",
    "reconstruct",
    "recover",
    "run_recovery",
    "save_checkpoint",
    "sparsity_report",
    "synthesize",
]
