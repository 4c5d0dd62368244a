"""Pointwise binary cross-entropy (monoBERT-style; Nogueira & Cho, "Passage Re-ranking with BERT", 2019),
the baseline for ablations: each pair is classified relevant (the positive at index 0) or not.

Shapes: scores (queries, group) float -> scalar (mean over all pairs); `teacher` is not read.
"""
import torch
import torch.nn.functional as F


def bce_loss(scores: torch.Tensor, teacher: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(scores / temperature, labels)
