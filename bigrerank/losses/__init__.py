"""Group losses: each maps scores (queries, group), positive first, to a scalar."""
from .bce import bce_loss
from .distill import distill_loss
from .lce import lce_loss

LOSSES = {"lce": lce_loss, "bce": bce_loss}  # from the scores alone
TEACHER_LOSSES = {"distill": distill_loss}  # from the scores and the teacher's scores of the same passages


def group_loss(name: str, temperature: float, teacher=None):
    """`--loss name` as a function of the scores alone (the teacher's scores bound when the loss reads them)."""
    if name in TEACHER_LOSSES:
        return lambda scores: TEACHER_LOSSES[name](scores, teacher, temperature)
    return lambda scores: LOSSES[name](scores, temperature)
