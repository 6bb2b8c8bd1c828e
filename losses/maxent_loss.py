"""MaxEntLoss: the spatio-temporal fusion project's "Maximum Entropy Principle" loss (its LossMEP), every release.

The project published three different functions under the one name:

- ``form='entropy'`` (released v1.0 / v2.0, default alpha 0.5):
  ``(1 - alpha) * MSE + alpha * H``, with ``H = -sum_c p_c log p_c`` the entropy of the softmax of the prediction
  over its channels, averaged over pixels and images. The term is *added*, so minimising the loss *minimises* the
  entropy (it pushes each pixel towards one dominant channel), despite the name. That sign is the published
  function and is kept; pass a smaller alpha to weaken it.
- ``form='tv'`` (the repository head, "corrected math", default alpha 0.1):
  ``(1 - alpha) * MSE + alpha * TV``, ``TV = (sum |d/dx| + sum |d/dy|) / (B * H * W)`` with forward differences of
  the prediction, summed over channels too (the divisor does not count channels).
- tag v3.0 (the first "corrected math" release) computes a different TV form, ``MSE + a * TV`` (default a 0.5, its
  main.py passes 0.2): the MSE term is not scaled by ``1 - a``. It is the head's form with ``alpha = a / (1 + a)``
  and ``loss_weight = 1 + a``, so v3.0's loss is ``MaxEntLoss(form='tv', alpha=a / (1 + a), loss_weight=1 + a)``
  (e.g. a = 0.2: alpha = 1/6, loss_weight = 1.2), not ``form='tv', alpha=a``.

Clips (B, T, C, H, W) are scored frame by frame (B * T images, so the TV divisor is B * T * H * W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vsrkit.losses.ssim_loss import REDUCTIONS, fold_frames
from vsrkit.utils.registry import LOSS_REGISTRY, register

PUBLISHED_ALPHA = {'entropy': 0.5, 'tv': 0.1}


def channel_entropy(pred: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the entropy of softmax(pred) over channels, per image: (N, C, H, W) -> (N,)."""
    log_p = F.log_softmax(pred, dim=1)  # log_softmax, not log(softmax): finite for any logits
    return -(log_p.exp() * log_p).sum(dim=1).mean(dim=(1, 2))


def total_variation(pred: torch.Tensor) -> torch.Tensor:
    """(sum |vertical diffs| + sum |horizontal diffs|) / (H * W) per image, channels summed: (N, C, H, W) -> (N,)."""
    h, w = pred.shape[-2:]
    dy = (pred[..., 1:, :] - pred[..., :-1, :]).abs().sum(dim=(1, 2, 3))
    dx = (pred[..., :, 1:] - pred[..., :, :-1]).abs().sum(dim=(1, 2, 3))
    return (dx + dy) / (h * w)


@register(LOSS_REGISTRY)
class MaxEntLoss(nn.Module):
    """``loss_weight * ((1 - alpha) * MSE + alpha * R)``, R the channel entropy or the total variation of pred.

    Args:
        loss_weight: factor on the whole loss.
        reduction: 'none' returns the per-image loss, (B,) for images and (B, T) for clips; 'mean' (the published
            function) and 'sum' reduce it over images/frames.
        alpha: weight of the regulariser in [0, 1]; None takes the published default of ``form``
            (0.5 for 'entropy', 0.1 for 'tv' as at the repository head).
        form: 'entropy' (releases v1.0/v2.0) or 'tv' (the repository head's form; tag v3.0's ``MSE + a * TV`` is
            ``form='tv', alpha=a / (1 + a), loss_weight=1 + a``); see the module docstring.

    ``forward(pred, target, weight=None)``: no weight map is supported (the regulariser has no per-pixel
    target to weight), so passing one raises ValueError.
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = 'mean', alpha: float | None = None,
                 form: str = 'entropy') -> None:
        super().__init__()
        if form not in PUBLISHED_ALPHA:
            raise ValueError(f'MaxEntLoss form must be one of {tuple(PUBLISHED_ALPHA)}, got {form!r}')
        if reduction not in REDUCTIONS:
            raise ValueError(f'MaxEntLoss reduction must be one of {REDUCTIONS}, got {reduction!r}')
        alpha = PUBLISHED_ALPHA[form] if alpha is None else alpha
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'MaxEntLoss alpha must be in [0, 1], got {alpha}')
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.alpha = alpha
        self.form = form

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        if weight is not None:
            raise ValueError('MaxEntLoss does not support a weight map (weight must be None)')
        if pred.shape != target.shape:
            raise ValueError(f'MaxEntLoss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape')
        x, y = fold_frames(pred, 'pred'), fold_frames(target, 'target')
        mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
        reg = channel_entropy(x) if self.form == 'entropy' else total_variation(x)
        loss = (self.loss_weight * ((1 - self.alpha) * mse + self.alpha * reg)).view(pred.shape[:-3])
        if self.reduction == 'mean':
            return loss.mean()
        return loss.sum() if self.reduction == 'sum' else loss
