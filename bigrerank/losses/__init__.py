"""Group losses: each maps scores (queries, group), positive first, to a scalar."""
from .bce import bce_loss
from .lce import lce_loss

LOSSES = {"lce": lce_loss, "bce": bce_loss}
