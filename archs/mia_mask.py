"""MIA-VSR's adaptive mask: how it is controlled (:class:`MaskControl`), the predictor's parameters
(:class:`MaskPredictor`) and the keep decision (:func:`keep_decision`); registers nothing.

A linear layer reads |LN(current) - the same block's LN(current) of the previous frame| and gives a keep logit
per token; a token that is not kept reuses the previous frame's attention-projection output and MLP output of
that block. Names: a *keep weight* is the float 0/1 decision (differentiable through the straight-through
estimator in training), a *kept mask* the bool one used in eval, *kept rows* the row indices of kept tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MaskControl:
    """How the adaptive mask behaves in one forward call (read from the network's attributes).

    use_mask: apply the mask at all (False: every token is computed, as the original's ``use_mask=False``).
    gumbel_noise: add logistic noise before thresholding in training mode.
    temperature: Gumbel-sigmoid temperature (2/3 in the original).
    sparse: in eval mode, compute only kept tokens (gather/scatter: the MLP's, and the attention's where a block
        keeps less than ``mia_block.GATHERED_BELOW`` of them); False computes all and selects.
    forced_keep_ratio: eval only: keep this fraction of each sample's tokens (highest logits) instead of
        thresholding at 0 — for benchmarks with untrained weights.
    """

    use_mask: bool = True
    gumbel_noise: bool = True
    temperature: float = 2 / 3
    sparse: bool = True
    forced_keep_ratio: float | None = None


class MaskPredictor(nn.Module):
    """Per-token keep logit from the change since the previous frame (``predmask.rnn`` in the checkpoints).

    The blocks apply ``rnn``'s weights folded with norm1's scale (``BlockConstants.mask_weight``); ``forward``
    is the plain layer, for reference."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.rnn = nn.Linear(dim, 1)

    def forward(self, change: torch.Tensor) -> torch.Tensor:
        return self.rnn(change).squeeze(-1)


def keep_decision(logits: torch.Tensor, batch: int, training: bool, control: MaskControl) -> torch.Tensor:
    """Keep weights (b*nW, L): 0/1 floats from logits; in training a Gumbel-sigmoid with straight-through
    gradient (the weights then carry the gradient of the soft decision)."""
    if training:
        if control.gumbel_noise:
            # The difference of two Gumbel samples is logistic: one draw of logit(U) is the same distribution.
            logits = logits + torch.logit(torch.rand_like(logits), eps=1e-6)
        soft = torch.sigmoid(logits / control.temperature)
        return ((soft >= 0.5).to(soft.dtype) - soft).detach() + soft
    if control.forced_keep_ratio is not None:
        per_sample = logits.reshape(batch, -1)
        n = per_sample.shape[1]
        k = round(control.forced_keep_ratio * n)
        # the fewer of the kept and the dropped are selected: topk of 3686 of 4096 took 0.15 ms, of 410 0.02 ms
        if 2 * k > n:
            keep_weight = torch.ones_like(per_sample)
            keep_weight.scatter_(1, per_sample.topk(n - k, dim=1, largest=False).indices, 0.0)
        else:
            keep_weight = torch.zeros_like(per_sample)
            keep_weight.scatter_(1, per_sample.topk(k, dim=1).indices, 1.0)
        return keep_weight.view_as(logits)
    # Same comparison as the original (not logits >= 0): identical decisions for logits within rounding of 0.
    return (torch.sigmoid(logits / control.temperature) >= 0.5).to(logits.dtype)
