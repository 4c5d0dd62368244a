"""Listwise distillation: LCE with the teacher's distribution over the group as the target.

The group's scores are the same as LCE's (positive first, then hard negatives); instead of the one-hot target,
the target is softmax(teacher scores), the distribution a stronger reranker puts on the same passages (as in
FlagEmbedding's reranker distillation with `pos_scores`/`neg_scores`). The loss is the cross-entropy
H(softmax(teacher), softmax(scores / temperature)), which is the KL divergence to the teacher up to the
teacher's entropy (a constant): the same gradients.

Shapes: scores (queries, group) float, teacher (queries, group) float -> scalar (mean over queries).
"""
import torch
import torch.nn.functional as F


def distill_loss(scores: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    target = torch.softmax(teacher.to(scores.dtype), dim=-1)
    return F.cross_entropy(scores / temperature, target)
