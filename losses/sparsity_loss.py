"""Sparsity loss of MIA-VSR: pushes the adaptive masks to keep fewer tokens.

The original (LabShuHangGU/MIA-VSR, ``losses/sparsity_loss.py``) returns 1e-4 x the mean keep ratio over
branches, frames and blocks and accepts a ``sparsity_target`` that it never uses. Here ``sparsity_target``
works: when set, each block's keep ratio is penalised by its squared deviation from the target, so the loss
no longer drives the masks towards keeping nothing (tests/losses/test_sparsity_loss.py shows the option changes
the loss).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vsrkit.utils.registry import LOSS_REGISTRY, register

_REDUCTIONS = ('mean', 'sum', 'none')


def flatten_keep_ratios(keep_ratios: torch.Tensor | Sequence) -> torch.Tensor:
    """A 1-D tensor of keep ratios from a tensor (e.g. MIAVSR's (branches, frames, blocks)) or from the
    original's nested lists ``[branch][frame][block]``, whose ``None`` entries (frames without a mask) are
    skipped — which is what the original's denominator 4 x (frames - 1) x blocks amounts to."""
    if isinstance(keep_ratios, torch.Tensor):
        return keep_ratios.reshape(-1)
    flat: list[torch.Tensor] = []
    stack = [keep_ratios]
    while stack:
        item = stack.pop()
        if item is None:
            continue
        if isinstance(item, torch.Tensor):
            flat.append(item.reshape(-1))
        elif isinstance(item, (int, float)):
            flat.append(torch.tensor([float(item)]))
        else:
            stack.extend(reversed(list(item)))
    if not flat:
        raise ValueError('SparsityLoss got no keep ratios (all entries None or empty)')
    return torch.cat(flat)


@register(LOSS_REGISTRY)
class SparsityLoss(nn.Module):
    """Keep-ratio penalty for MIA-VSR's adaptive masks.

    Args:
        loss_weight: multiplier (1e-4 in the original).
        sparsity_target: None: the loss is the keep ratio itself (the original); a float in [0, 1]: the loss of
            each block is (keep ratio - target)^2.
        reduction: 'mean' | 'sum' | 'none' over the blocks (x branches x frames).

    forward(keep_ratios) -> loss; keep_ratios as returned by ``MIAVSR(..., return_keep_ratios=True)`` or the
    original's nested lists.
    """

    def __init__(self, loss_weight: float = 1e-4, sparsity_target: float | None = None,
                 reduction: str = 'mean') -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f'SparsityLoss reduction must be one of {_REDUCTIONS}, got {reduction!r}')
        if loss_weight < 0:
            raise ValueError(f'SparsityLoss loss_weight must be >= 0, got {loss_weight}')
        if sparsity_target is not None and not 0.0 <= sparsity_target <= 1.0:
            raise ValueError(f'SparsityLoss sparsity_target must be None or in [0, 1], got {sparsity_target}')
        self.loss_weight = loss_weight
        self.sparsity_target = sparsity_target
        self.reduction = reduction

    def forward(self, keep_ratios: torch.Tensor | Sequence) -> torch.Tensor:
        ratios = flatten_keep_ratios(keep_ratios).float()
        loss = ratios if self.sparsity_target is None else (ratios - self.sparsity_target) ** 2
        if self.reduction == 'mean':
            loss = loss.mean()
        elif self.reduction == 'sum':
            loss = loss.sum()
        return self.loss_weight * loss
