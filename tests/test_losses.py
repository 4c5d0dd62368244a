"""LCE, distillation and BCE on (queries, group) scores with the positive first."""
import math

import torch

from bigrerank.losses import bce_loss, lce_loss


def test_lce_is_the_cross_entropy_of_the_group_softmax_with_the_positive_as_target():
    scores = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
    expected = [-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1))), -math.log(1 / (1 + 2 * math.e))]
    assert torch.isclose(lce_loss(scores), torch.tensor(sum(expected) / 2))
    assert torch.isclose(lce_loss(torch.zeros(4, 8)), torch.tensor(math.log(8)))  # uninformed: ln G
    assert torch.isclose(lce_loss(scores, temperature=0.5), lce_loss(scores * 2))


def test_lce_is_shift_invariant_and_bce_is_not():
    scores = torch.randn(3, 5)
    assert torch.isclose(lce_loss(scores + 7), lce_loss(scores), atol=1e-6)
    assert not torch.isclose(bce_loss(scores + 7), bce_loss(scores))


def test_bce_labels_the_positive_one_and_the_negatives_zero():
    scores = torch.tensor([[3.0, -2.0]])
    sig = torch.sigmoid
    expected = -(torch.log(sig(torch.tensor(3.0))) + torch.log(1 - sig(torch.tensor(-2.0)))) / 2
    assert torch.isclose(bce_loss(scores), expected)


def test_distill_is_the_cross_entropy_to_the_teachers_group_softmax():
    from bigrerank.losses import distill_loss

    scores, teacher = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[1.0, 3.0, 0.0]])
    target = [math.exp(t) / (math.e + math.exp(3) + 1) for t in (1.0, 3.0, 0.0)]
    log_p = [s - math.log(math.exp(2) + 1 + math.exp(-1)) for s in (2.0, 0.0, -1.0)]
    assert torch.isclose(distill_loss(scores, teacher), torch.tensor(-sum(t * lp for t, lp in zip(target, log_p))))
    assert torch.isclose(distill_loss(scores, teacher, temperature=0.5), distill_loss(scores * 2, teacher))
    # a confident teacher that ranks the positive first is LCE; its gradient is softmax(scores) - softmax(teacher)
    confident = torch.tensor([[60.0, 0.0, 0.0]])
    assert torch.isclose(distill_loss(scores, confident), lce_loss(scores))
    leaf = scores.clone().requires_grad_(True)
    distill_loss(leaf, teacher).backward()
    assert torch.allclose(leaf.grad, torch.softmax(scores, -1) - torch.softmax(teacher, -1), atol=1e-6)
