"""The Set5-style evaluation protocol for single-image SR networks, and building a network from a checkpoint.

Protocol (as VDSR, SRCNN and most SR papers report): ground-truth image, cropped to a multiple of the scale →
MATLAB-compatible bicubic downscaling (basicsr's ``imresize``), rounded to uint8 → network → uint8 output →
PSNR and SSIM on the Y channel (ITU-R BT.601, basicsr's ``calculate_psnr`` / ``calculate_ssim`` with
``test_y_channel=True``) after shaving ``scale`` pixels from every border. Bicubic upscaling of the same LR image
is scored the same way beside it.

Three kinds of network run through it, told apart by probe calls
(:func:`input_mode`):

- ``'rgb'``: RGB in, RGB x scale out (ELSR, ViTSR, ...);
- ``'y'``: the Y channel in, Y x scale out; Cb/Cr are upscaled bicubically;
- ``'y_upscaled'``: the Y channel of the bicubic-upscaled image in, a refined Y of the same size out (VDSR);
  the result is put back together with the bicubic Cb/Cr.

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
from vsrkit.archs.loader import load_model
from vsrkit.data.lmdb_io import scan_images
from vsrkit.utils.color import bicubic_downscale, bicubic_upscale, luma_pipeline, mod_crop, to_uint8

MODES = ('rgb', 'y', 'y_upscaled')


# ------------------------------------------------------------------------------------------ networks
def load_network(checkpoint_path: str | Path, opt_path: str | Path | None = None, arch: str | None = None,
                 device: str | torch.device = 'cpu') -> tuple[nn.Module, dict]:
    """The network a checkpoint holds, strictly loaded, eval mode: ``vsrkit.archs.loader.load_model``
    (the checkpoint's ``network_g``, else recognised from its keys and shapes; ``opt_path``/``arch`` override).
    Returns (network, its network_g options including 'type')."""
    net, info = load_model(checkpoint_path, arch=arch, options=opt_path, device=device)
    return net, {'type': info['arch'], **info['options']}


@torch.no_grad()
def input_mode(net: nn.Module, scale: int) -> str:
    """'rgb', 'y' or 'y_upscaled' (module docstring), from probe calls with 3- and 1-channel inputs."""
    param = next(net.parameters())
    size = 8
    for channels in (3, 1):
        try:
            out = net(torch.zeros(1, channels, size, size, dtype=param.dtype, device=param.device))
            break
        except RuntimeError:  # the wrong number of input channels for the first conv
            continue
    else:
        raise ValueError(f'{type(net).__name__} accepts neither 3-channel (RGB) nor 1-channel (Y) images')
    out_size = out.shape[-1]
    if channels == 1 and out_size == size:
        return 'y_upscaled'
    if out_size != size * scale:
        raise ValueError(f'{type(net).__name__} maps {size}x{size} to {out.shape[-2]}x{out_size}, not x{scale}')
    return 'rgb' if channels == 3 else 'y'


@torch.no_grad()
def super_resolve(net: nn.Module, lr: np.ndarray, scale: int, mode: str) -> np.ndarray:
    """uint8 BGR LR image (h, w, 3) → uint8 BGR SR image (h·scale, w·scale, 3) by ``net`` in ``mode``."""
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    param = next(net.parameters())

    def run(channels: np.ndarray) -> np.ndarray:  # (H, W, C) float → network → (H', W', C') float
        x = torch.from_numpy(np.ascontiguousarray(channels.transpose(2, 0, 1))).unsqueeze(0)
        y = net(x.to(device=param.device, dtype=param.dtype)).float().clamp(0, 1)
        return y[0].permute(1, 2, 0).cpu().numpy().astype(np.float64)

    lr_f = lr.astype(np.float64) / 255.0
    if mode == 'rgb':
        return to_uint8(run(lr_f[..., ::-1])[..., ::-1])
    return to_uint8(luma_pipeline(run, lr_f, scale, upscaled_input=mode == 'y_upscaled'))


def score(image: np.ndarray, gt: np.ndarray, scale: int, y_only: bool = True) -> dict[str, float]:
    """PSNR and SSIM of a uint8 BGR image against GT, ``scale`` pixels shaved (Y channel unless ``y_only=False``)."""
    return {'psnr': float(calculate_psnr(image, gt, crop_border=scale, test_y_channel=y_only)),
            'ssim': float(calculate_ssim(image, gt, crop_border=scale, test_y_channel=y_only))}


def evaluate_images(net: nn.Module, gt_dir: str | Path, scale: int, y_only: bool = True) -> list[dict[str, Any]]:
    """The protocol (module docstring) over every image of ``gt_dir``: one row per image with
    name, bicubic_psnr, psnr, bicubic_ssim, ssim."""
    items = scan_images(gt_dir)
    if not items:
        raise FileNotFoundError(f'no images found in {gt_dir}')
    mode = input_mode(net, scale)
    rows = []
    for key, path in items:
        gt = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if gt is None:
            raise ValueError(f'cannot decode image {path}')
        gt = mod_crop(gt, scale)
        lr = bicubic_downscale(gt, scale)
        bicubic = to_uint8(bicubic_upscale(lr.astype(np.float64) / 255.0, scale))
        ours, base = score(super_resolve(net, lr, scale, mode), gt, scale, y_only), score(bicubic, gt, scale, y_only)
        rows.append({'name': key, 'bicubic_psnr': base['psnr'], 'psnr': ours['psnr'],
                     'bicubic_ssim': base['ssim'], 'ssim': ours['ssim']})
    return rows
