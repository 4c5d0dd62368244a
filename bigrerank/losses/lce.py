"""Localized Contrastive Estimation (Gao, Dai & Callan, "Rethink Training of BERT Rerankers in Multi-Stage
Retrieval Pipeline", ECIR 2021).

Each query's group holds its positive at index 0 followed by n-1 hard negatives; the loss is the
cross-entropy of the softmax over the group's scores with the positive as target.

Shapes: scores (queries, group) float -> scalar (mean over queries); `teacher` is not read.
"""
import torch
import torch.nn.functional as F


def lce_loss(scores: torch.Tensor, teacher: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores / temperature, target)
