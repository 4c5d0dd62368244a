"""Group losses, one registry. Each maps scores (queries, group), positive first, to a scalar with the same
signature, `loss(scores, teacher=None, temperature=1.0)`; `teacher` holds a teacher's scores of the same passages."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .bce import bce_loss
from .distill import distill_loss
from .lce import lce_loss


@dataclass(frozen=True)
class LossSpec:
    fn: Callable  # fn(scores, teacher=None, temperature=1.0) -> scalar
    needs_teacher: bool = False  # the training data must carry the teacher's scores


LOSSES = {"lce": LossSpec(lce_loss), "bce": LossSpec(bce_loss), "distill": LossSpec(distill_loss, needs_teacher=True)}
