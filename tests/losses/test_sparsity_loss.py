"""SparsityLoss: the original's value (1e-4 x mean keep ratio), and the now-working sparsity_target."""
from __future__ import annotations

import pytest
import torch

import vsrkit.losses  # noqa: F401  (registers the losses)
from vsrkit.losses.sparsity_loss import SparsityLoss
from vsrkit.utils.registry import LOSS_REGISTRY


def test_registered_and_matches_the_original_on_nested_lists():
    assert LOSS_REGISTRY.get('SparsityLoss') is SparsityLoss
    torch.manual_seed(0)
    # the original's structure: [branch][frame][block], frame 0 has no mask (None)
    masks = [[[None] * 3] + [[torch.rand(()) for _ in range(3)] for _ in range(4)] for _ in range(4)]
    total = sum(float(m) for branch in masks for frame in branch for m in frame if m is not None)
    original = 1e-4 * total / (4 * (5 - 1) * 3)
    assert SparsityLoss()(masks).item() == pytest.approx(original, rel=1e-6)
    stacked = torch.stack([torch.stack([torch.stack(f) for f in b[1:]]) for b in masks])
    assert SparsityLoss()(stacked).item() == pytest.approx(original, rel=1e-6)


def test_target_changes_the_loss():
    ratios = torch.tensor([[0.2, 0.6], [0.4, 1.0]], requires_grad=True)
    plain = SparsityLoss(loss_weight=1.0)(ratios)
    targeted = SparsityLoss(loss_weight=1.0, sparsity_target=0.5)(ratios)
    assert plain.item() == pytest.approx(0.55)
    assert targeted.item() == pytest.approx((0.09 + 0.01 + 0.01 + 0.25) / 4)
    targeted.backward()
    # below the target the gradient pushes the keep ratio up, above it down (the original only pushes down)
    assert ratios.grad[0, 0] < 0 < ratios.grad[1, 1]
    assert SparsityLoss(loss_weight=1.0, sparsity_target=0.5)(torch.full((3,), 0.5)).item() == 0.0


def test_reductions_and_bad_options():
    ratios = torch.tensor([0.25, 0.75])
    assert SparsityLoss(loss_weight=2.0, reduction='sum')(ratios).item() == pytest.approx(2.0)
    assert torch.allclose(SparsityLoss(loss_weight=2.0, reduction='none')(ratios), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match='reduction'):
        SparsityLoss(reduction='max')
    with pytest.raises(ValueError, match='sparsity_target'):
        SparsityLoss(sparsity_target=1.5)
    with pytest.raises(ValueError, match='no keep ratios'):
        SparsityLoss()([[None]])
