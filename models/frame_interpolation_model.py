"""FrameInterpolationModel: trains a sequence network that predicts the frames between known frames (ConvLSTM).

The fed batch is ``lq`` = known frames (B, T, C, H, W) and ``gt`` = the frames to predict (B, T, C, H, W), as
``EvenOddFrameDataset`` gives them (even frames in, odd frames as targets). The network returns
``(frames, state)`` or just ``frames``; every ``train.<name>_opt`` loss is applied to (frames, gt), so per-frame
losses such as SSIMLoss and MaxEntLoss see the (B, T, C, H, W) layout.

Validation scores each predicted frame against its target with ``val.metrics`` (basicsr metrics on uint8 images)
and averages over the sequence; ``val.compare_blend: true`` adds the same metrics for the trivial interpolator
(the mean of the two neighbouring known frames; the last, extrapolated, frame repeats the last known one) as
``blend_<metric>``, so a table shows whether the network beats it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.metrics import calculate_metric
from basicsr.utils import imwrite, tensor2img
from vsrkit.models.base import TrainableModel, unwrap
from vsrkit.utils.registry import MODEL_REGISTRY, register


def blend_interpolation(known: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) known frames → the mean of each pair of neighbours; the last slot repeats the last frame."""
    return torch.cat([(known[:, :-1] + known[:, 1:]) / 2, known[:, -1:]], dim=1)


@register(MODEL_REGISTRY)
class FrameInterpolationModel(TrainableModel):
    """Sequence-to-sequence frame interpolation model type (see module docstring)."""

    def predict(self, net: torch.nn.Module, lq: torch.Tensor) -> torch.Tensor:
        out = net(lq)
        return out[0] if isinstance(out, tuple) else out

    def compute_losses(self, current_iter: int) -> dict[str, torch.Tensor]:
        self.output = self.predict(self.net_g, self.lq)
        if self.output.shape != self.gt.shape:
            raise ValueError(f'{type(unwrap(self.net_g)).__name__} returned {tuple(self.output.shape)} for '
                             f'targets {tuple(self.gt.shape)}: expected one predicted frame per target frame')
        return {f'l_{name}': loss(self.output, self.gt) for name, loss in self.losses.items()}

    def validate_sample(self, sample: dict, current_iter: int, save_img: bool) -> dict[str, Any]:
        val = self.opt.get('val') or {}
        lq, gt = sample['lq'].unsqueeze(0).to(self.device), sample['gt'].unsqueeze(0)
        candidates = {'': self.predict(self.inference_net, lq).float().cpu()}
        if val.get('compare_blend'):
            candidates['blend_'] = blend_interpolation(lq.float().cpu())
        name = str(sample.get('key', 'clip'))
        row: dict[str, Any] = {'name': name}
        targets = [tensor2img(gt[:, t]) for t in range(gt.shape[1])]
        for prefix, frames in candidates.items():
            images = [tensor2img(frames[:, t]) for t in range(frames.shape[1])]
            for metric, metric_opt in (val.get('metrics') or {}).items():
                row[prefix + metric] = float(np.mean([calculate_metric({'img': img, 'img2': ref}, metric_opt)
                                                      for img, ref in zip(images, targets)]))
            if save_img and not prefix:
                folder = Path(self.opt['path'].get('visualization', self.opt['path']['experiments_root']))
                for t, image in enumerate(images):
                    imwrite(image, str(folder / name.replace('/', '_') / f'{t:03d}_{current_iter}.png'))
        return row
