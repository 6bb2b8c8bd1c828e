"""Overlapping spatial tiles with blended seams: run any SR network on frames larger than memory allows.

``tiled_forward`` cuts the LR input into ``tile`` x ``tile`` tiles overlapping by ``overlap`` pixels, runs
``fn`` on each (padded to the network's size ``multiple``), and blends the upscaled tiles with weights that
ramp linearly across each overlap, so seams do not show. Shared by validation, the inference scripts and
video upscaling.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Reflect-pad the last two dims up to a multiple (replicate where the input is too small to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, 0, 0
    mode = 'reflect' if ph < h and pw < w else 'replicate'
    flat = x.reshape(-1, *x.shape[-3:])
    padded = F.pad(flat, (0, pw, 0, ph), mode=mode)
    return padded.reshape(*x.shape[:-2], h + ph, w + pw), ph, pw


def padded_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int,
                   multiple: int = 1) -> torch.Tensor:
    padded, ph, pw = pad_to_multiple(x, multiple)
    out = fn(padded)
    h, w = x.shape[-2:]
    return out[..., :h * scale, :w * scale] if (ph or pw) else out


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    weight = torch.ones(length)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        if not at_start:
            weight[:overlap] = ramp
        if not at_end:
            weight[-overlap:] = ramp.flip(0)
    return weight


def tiled_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, tile: int | None,
                  overlap: int = 16, multiple: int = 1) -> torch.Tensor:
    """Apply ``fn`` (LR (..., C, h, w) -> SR (..., C', h*scale, w*scale)) tile by tile; see module docstring.

    ``tile=None`` (or a tile covering the whole input) is one padded call. Leading dims (batch, time) pass
    through, so recurrent video networks tile the same way as image networks.
    """
    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return padded_forward(fn, x, scale, multiple)
    if overlap >= tile:
        raise ValueError(f'tile overlap {overlap} must be smaller than the tile size {tile}')
    out = weight_sum = None
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    for y in ys:
        for x0 in xs:
            patch = x[..., y:y + tile, x0:x0 + tile]
            result = padded_forward(fn, patch, scale, multiple)
            if out is None:
                out = result.new_zeros(*result.shape[:-2], h * scale, w * scale)
                weight_sum = result.new_zeros(h * scale, w * scale)
            th, tw = result.shape[-2:]
            wy = _ramp(th, overlap * scale, y == ys[0], y == ys[-1]).to(result)
            wx = _ramp(tw, overlap * scale, x0 == xs[0], x0 == xs[-1]).to(result)
            weight = wy[:, None] * wx[None, :]
            out[..., y * scale:y * scale + th, x0 * scale:x0 * scale + tw] += result * weight
            weight_sum[y * scale:y * scale + th, x0 * scale:x0 * scale + tw] += weight
    return out / weight_sum
