"""The random-number state a gradient-cache recompute replays and a checkpoint restores."""
from __future__ import annotations

import torch


class RngState:
    """CPU (and current accelerator) RNG state, captured before a chunk and replayed for its recompute."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)

    def to_dict(self) -> dict:
        return {"cpu": self.cpu, **({"cuda": self.cuda} if self.cuda is not None else {})}

    @classmethod
    def from_dict(cls, state: dict) -> "RngState":
        rng = cls.__new__(cls)
        rng.cpu = state["cpu"]
        rng.cuda = state.get("cuda") if torch.cuda.is_available() else None
        return rng
