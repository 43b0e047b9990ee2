"""Held-out dreams: how a run checks itself without a single labelled image.

A data-free user has no labelled data, so a run cannot measure its own accuracy, and the field's habit
of choosing the best epoch on the test loader is closed to it. What it can measure is how often the
student answers like its teacher on dreams it never trained on: a few dreams made apart, from another
seed (:attr:`DreamConfig.holdout`). A student that picks the teacher's class where the teacher is right
is right too, so on real images agreement and accuracy go together; on held-out dreams it is the closest a
data-free run gets (``benchmarks/README.md`` measures how closely it tracks test accuracy).

The teacher is sure of its own dreams, so agreement on them saturates at once. The score is taken on
blends instead: each held-out dream, shifted and maybe flipped, with a quarter of another held-out dream
pasted into its middle (twice, with two partners). There the teacher's answer sits near a border between two
classes, and whether the student lands on the same side is what separates a good student from a poor one.
It counts decisions, not confidence: a divergence between the two output distributions (KL) rewards a
student whose BatchNorm was recalibrated on dreams for being confident in the teacher's way on dreams, even
where it became worse on real images (MobileNetV2 at 50%: KL preferred a student 6 points below its start,
agreement kept the start). Half-and-half pixel blends were measured too and chose worse: a higher learning
rate than the best for ResNet-20 at 90%, and a trained MobileNetV2 below its start at 50%.
"""

from __future__ import annotations

import torch
from torch import nn

from .augment import augment, paste
from .zoo import Normalization

__all__ = ["HoldoutAgreement", "blended_views"]

VIEW_SEED = 0  # one fixed draw of shifts, flips and partners: every score of a run sees the same views
VIEW_PADDING = 4  # shifts of up to this many pixels, like distillation's crops
PASTE_SHARE = 0.25  # a quarter of another held-out dream pasted into the middle of each
VIEWS_PER_DREAM = 2  # each held-out dream is scored this many times, with another partner each time


def blended_views(images: torch.Tensor) -> torch.Tensor:
    """The held-out dreams as the score sees them: :data:`VIEWS_PER_DREAM` views of each, shifted and maybe
    flipped, with a quarter of another held-out dream pasted into the middle."""
    generator = torch.Generator().manual_seed(VIEW_SEED)
    views = []
    for _ in range(VIEWS_PER_DREAM):
        shifted = augment(images, VIEW_PADDING, True, generator)
        views.append(paste(shifted, shifted[torch.randperm(len(shifted), generator=generator)], PASTE_SHARE))
    return torch.cat(views)


class HoldoutAgreement:
    """The share (%) of blended held-out dreams on which the student's top-1 class is the teacher's: 100 when
    it decides exactly like its teacher. Higher is better.

    The teacher's answers are computed once; each call runs the student (in eval mode, its mode restored)
    over the same views, so two calls differ only because the student did.
    """

    def __init__(
        self,
        teacher: nn.Module,
        images: torch.Tensor,
        normalization: Normalization,
        device: str | torch.device = "cpu",
    ):
        if images.dim() != 4 or not len(images):
            raise ValueError(f"held-out dreams must be a non-empty (N, 3, H, W) tensor, got {tuple(images.shape)}")
        views = normalization.normalize(blended_views(images)).to(torch.device(device))
        self.inputs = views.contiguous(memory_format=torch.channels_last)
        self.teacher_classes = self._classes(teacher)

    @torch.inference_mode()
    def _classes(self, model: nn.Module) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            return model(self.inputs).argmax(dim=1)
        finally:
            model.train(was_training)

    def __call__(self, student: nn.Module) -> float:
        """The student's agreement with its teacher on the blended held-out dreams, in percent."""
        return 100.0 * float((self._classes(student) == self.teacher_classes).float().mean())

    def __len__(self) -> int:
        return len(self.inputs)
