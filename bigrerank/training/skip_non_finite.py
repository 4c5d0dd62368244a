"""Skip an optimizer update whose reduced gradients are not finite, where DeepSpeed does not.

DeepSpeed checks the gradients before each update in its own optimizers (ZeRO 1-3, and the bf16/fp16
wrappers of ZeRO-0) and skips a step holding an inf or NaN. ZeRO-0 in fp32 steps a plain torch optimizer,
which would write the NaN into the weights. `guard(engine)` wraps that optimizer so it behaves like the
others: the step is skipped, `overflow` tells DeepSpeed (which then leaves the LR schedule where it is and
counts the step in `engine.skipped_steps`), and training goes on.
"""
from __future__ import annotations

import torch

from .. import distributed


class SkipNonFiniteUpdates:
    """A torch optimizer whose `step` does nothing when any gradient is not finite on any rank."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.overflow = False

    def __getattr__(self, name):  # param_groups, state, state_dict, load_state_dict, zero_grad, ...
        if name == "optimizer":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def step(self, closure=None):
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        self.overflow = not distributed.every_rank(finite)
        return None if self.overflow else self.optimizer.step(closure)


def guard(engine) -> None:
    """Give the engine's optimizer a non-finite check when it has none of its own (ZeRO-0 in fp32)."""
    if engine.optimizer is not None and not hasattr(engine.optimizer, "overflow"):
        engine.optimizer = SkipNonFiniteUpdates(engine.optimizer)
