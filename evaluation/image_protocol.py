"""The Set5-style evaluation protocol for single-image SR networks.

Protocol (as VDSR, SRCNN and most SR papers report): ground-truth image, cropped to a multiple of the scale →
MATLAB-compatible bicubic downscaling (basicsr's ``imresize``), rounded to uint8 → network → uint8 output →
PSNR and SSIM on the Y channel (ITU-R BT.601, basicsr's ``calculate_psnr`` / ``calculate_ssim`` with
``test_y_channel=True``) after shaving ``scale`` pixels from every border. Bicubic upscaling of the same LR image
is scored the same way beside it.

How a network is fed is its :class:`~vsrkit.archs.spec.ModelIO` (``info['io']`` of
:func:`vsrkit.archs.loader.load_model`: the architecture's spec, or the single-frame default), by its ``color``:

- ``'rgb'``: RGB in, RGB x scale out (ELSR, ViTSR, MSRResNet, ...);
- ``'grey'``: the Y channel in, Y x scale out; Cb/Cr are upscaled bicubically;
- ``'y_bicubic'``: the Y channel of the bicubic-upscaled image in, a refined Y of the same size out (VDSR);
  the result is put back together with the bicubic Cb/Cr.

The two Y kinds go through :func:`vsrkit.utils.color.luma_pipeline`. Inputs are padded to the network's size
``multiple`` (e.g. SwinIR's window) and the output cropped back.

Differences from VDSR's own MATLAB evaluation: its LR image is the Y channel downscaled in double precision,
here the whole RGB image is downscaled and rounded to uint8 (a real low-resolution image), and the output is
scored after conversion to a uint8 image; both shift PSNR by a few hundredths of a dB.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.metrics import calculate_psnr, calculate_ssim
from vsrkit.archs.spec import ModelIO
from vsrkit.data.lmdb_io import scan_images
from vsrkit.utils.color import bicubic_downscale, bicubic_upscale, luma_pipeline, mod_crop, to_uint8
from vsrkit.utils.tiling import padded_forward


def check_image_network(io: ModelIO, scale: int, name: str = 'the network') -> None:
    """ValueError unless a network fed as ``io`` can be scored at ``scale`` by this protocol."""
    if io.temporal != 'frame':
        raise ValueError(f'{name} is fed {io.describe()}: image evaluation needs a single-frame network')
    if io.out_channels != (3 if io.color == 'rgb' else 1):
        raise ValueError(f'{name} gives {io.out_channels} channels from {io.color}: image evaluation scores RGB '
                         'networks (3 channels out) and Y networks (1 channel out)')
    if io.color != 'y_bicubic' and io.scale != scale:
        raise ValueError(f'{name} upscales x{io.scale}, not x{scale} (--scale)')


@torch.no_grad()
def super_resolve(net: nn.Module, io: ModelIO, lr: np.ndarray, scale: int) -> np.ndarray:
    """uint8 BGR LR image (h, w, 3) → uint8 BGR SR image (h·scale, w·scale, 3) by ``net`` fed as ``io``."""
    check_image_network(io, scale, type(net).__name__)
    param = next(net.parameters())

    def run(channels: np.ndarray) -> np.ndarray:  # (H, W, C) float → network → (H', W', C') float
        x = torch.from_numpy(np.ascontiguousarray(channels.transpose(2, 0, 1))).unsqueeze(0)
        y = padded_forward(net, x.to(device=param.device, dtype=param.dtype), io.scale, io.multiple)
        return y.float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy().astype(np.float64)

    lr_f = lr.astype(np.float64) / 255.0
    if io.color == 'rgb':
        return to_uint8(run(lr_f[..., ::-1])[..., ::-1])
    return to_uint8(luma_pipeline(run, lr_f, scale, upscaled_input=io.color == 'y_bicubic'))


def score(image: np.ndarray, gt: np.ndarray, scale: int, y_only: bool = True) -> dict[str, float]:
    """PSNR and SSIM of a uint8 BGR image against GT, ``scale`` pixels shaved (Y channel unless ``y_only=False``)."""
    return {'psnr': float(calculate_psnr(image, gt, crop_border=scale, test_y_channel=y_only)),
            'ssim': float(calculate_ssim(image, gt, crop_border=scale, test_y_channel=y_only))}


def evaluate_images(net: nn.Module, io: ModelIO, gt_dir: str | Path, scale: int,
                    y_only: bool = True) -> list[dict[str, Any]]:
    """The protocol (module docstring) over every image of ``gt_dir`` for ``net`` fed as ``io``: one row per image
    with name, bicubic_psnr, psnr, bicubic_ssim, ssim."""
    check_image_network(io, scale, type(net).__name__)
    items = scan_images(gt_dir)
    if not items:
        raise FileNotFoundError(f'no images found in {gt_dir}')
    rows = []
    for key, path in items:
        gt = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if gt is None:
            raise ValueError(f'cannot decode image {path}')
        gt = mod_crop(gt, scale)
        lr = bicubic_downscale(gt, scale)
        bicubic = to_uint8(bicubic_upscale(lr.astype(np.float64) / 255.0, scale))
        ours, base = score(super_resolve(net, io, lr, scale), gt, scale, y_only), score(bicubic, gt, scale, y_only)
        rows.append({'name': key, 'bicubic_psnr': base['psnr'], 'psnr': ours['psnr'],
                     'bicubic_ssim': base['ssim'], 'ssim': ours['ssim']})
    return rows
