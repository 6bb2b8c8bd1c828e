"""ImageSRModel: single-image (or per-frame) super-resolution training and validation.

Losses are every ``train.<name>_opt`` entry (e.g. pixel_opt: {type: L1Loss}), applied to (output, gt).
Validation scores each image with basicsr's metrics (``val.metrics``: calculate_psnr / calculate_ssim with
crop_border and test_y_channel), optionally beside MATLAB-compatible bicubic upscaling of the same LR input
(``val.compare_bicubic``), and runs large inputs in blended tiles (``val.tile``: {size, overlap}).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.metrics import calculate_metric
from basicsr.utils import imwrite, tensor2img
from vsrkit.models.base import TrainableModel
from vsrkit.utils.registry import MODEL_REGISTRY, register
from vsrkit.utils.tiling import tiled_forward
from vsrkit.utils.color import bicubic_frame


@register(MODEL_REGISTRY)
class ImageSRModel(TrainableModel):
    """Per-image SR model type (see module docstring)."""

    def compute_losses(self, current_iter: int) -> dict[str, torch.Tensor]:
        self.output = self.net_g(self.lq)
        return {f'l_{name}': loss(self.output, self.gt) for name, loss in self.losses.items()}

    def infer(self, lq: torch.Tensor) -> torch.Tensor:
        """Network output for a batch of LR images, tiled if ``val.tile`` says so."""
        val = self.opt.get('val') or {}
        tile = val.get('tile') or {}
        scale = int(self.opt.get('scale', 1))
        return tiled_forward(self.inference_net, lq.to(self.device), scale, tile.get('size'),
                             int(tile.get('overlap', 16)), int(tile.get('multiple', 1)))

    def validate_sample(self, sample: dict, current_iter: int, save_img: bool) -> dict[str, Any]:
        val = self.opt.get('val') or {}
        lq = sample['lq'].unsqueeze(0)
        name = Path(str(sample.get('key', sample.get('lq_path', 'image')))).name
        sr = tensor2img(self.infer(lq).float().cpu())
        row: dict[str, Any] = {'name': name}
        gt = tensor2img(sample['gt'].unsqueeze(0)) if 'gt' in sample else None
        candidates = {'': sr}
        if val.get('compare_bicubic') and gt is not None:
            candidates['bicubic_'] = tensor2img(bicubic_frame(lq[0], int(self.opt.get('scale', 1))))
        for prefix, image in candidates.items():
            for metric, metric_opt in (val.get('metrics') or {}).items():
                if gt is not None:
                    row[prefix + metric] = float(calculate_metric({'img': image, 'img2': gt}, metric_opt))
        if save_img:
            folder = Path(self.opt['path'].get('visualization', self.opt['path']['experiments_root']))
            imwrite(sr, str(folder / Path(name).stem / f'{Path(name).stem}_{current_iter}.png'))
        return row
