"""Colour and resampling, one of each: MATLAB-compatible bicubic (basicsr's ``imresize``), ITU-R BT.601 RGB↔YCbCr
(basicsr's ``bgr2ycbcr`` / ``ycbcr2bgr``), and the luma pipeline of Y-channel networks (VDSR and kin).

Every path that feeds a Y-channel network — image evaluation, video upscaling, validation — goes through
:func:`luma_pipeline`, so one checkpoint gives the same pixels everywhere.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

import vsrkit.utils.basicsr_compat  # noqa: F401  (must precede the basicsr import)
from basicsr.utils.color_util import bgr2ycbcr, ycbcr2bgr
from basicsr.utils.matlab_functions import imresize


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float image in [0, 1] → uint8 (rounded, clipped)."""
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so that height and width are multiples of ``scale``."""
    h, w = image.shape[:2]
    return image[:h - h % scale, :w - w % scale]


def bicubic_downscale(image: np.ndarray, scale: int) -> np.ndarray:
    """uint8 image (H, W[, C]) → MATLAB-bicubic x1/scale, rounded to uint8."""
    return to_uint8(imresize(image.astype(np.float64) / 255.0, 1.0 / scale))


def bicubic_upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """float image in [0, 1] (H, W[, C]) → MATLAB-bicubic x scale, float (not clipped)."""
    return imresize(image.astype(np.float64), scale)


def bicubic_frame(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB-compatible bicubic upscaling of one (C, h, w) tensor frame in [0, 1], clipped, float32."""
    up = imresize(lq.permute(1, 2, 0).double().cpu().numpy(), scale)
    if up.ndim == 2:
        up = up[..., None]
    return torch.from_numpy(np.ascontiguousarray(up)).permute(2, 0, 1).float().clamp_(0, 1)


def luma_inputs(lr_bgr: np.ndarray, scale: int, upscaled_input: bool) -> tuple[np.ndarray, np.ndarray]:
    """The first half of :func:`luma_pipeline`: (the network's Y input (h', w', 1) float64, the YCbCr of the
    MATLAB-bicubic upscale (h·s, w·s, 3) float32 whose Cb/Cr :func:`luma_merge` keeps)."""
    ycbcr = bgr2ycbcr(bicubic_upscale(lr_bgr, scale).astype(np.float32))
    y_in = ycbcr[..., :1] if upscaled_input else bgr2ycbcr(lr_bgr.astype(np.float32))[..., :1]
    return y_in.astype(np.float64), ycbcr


def luma_merge(y_out: np.ndarray, ycbcr: np.ndarray) -> np.ndarray:
    """The second half of :func:`luma_pipeline`: the network's Y (H, W, 1) with the bicubic Cb/Cr → BGR float."""
    ycbcr = ycbcr.copy()
    ycbcr[..., :1] = y_out
    return ycbcr2bgr(ycbcr)


def luma_pipeline(run: Callable[[np.ndarray], np.ndarray], lr_bgr: np.ndarray, scale: int,
                  upscaled_input: bool) -> np.ndarray:
    """Super-resolve a BGR float image in [0, 1] (h, w, 3) with a network on the Y channel only.

    ``run`` maps a (H, W, 1) float Y image to the network's Y output. ``upscaled_input``: the network takes the
    Y of the MATLAB-bicubic upscale and refines it at the same size (VDSR); otherwise it takes the LR Y and
    upscales by ``scale`` itself. Cb/Cr come from the bicubic upscale. Returns a BGR float image (h·s, w·s, 3).
    Callers that batch frames (video upscaling) call its two halves, :func:`luma_inputs` and :func:`luma_merge`."""
    y_in, ycbcr = luma_inputs(lr_bgr, scale, upscaled_input)
    return luma_merge(run(y_in), ycbcr)
