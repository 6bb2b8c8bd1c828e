"""Overlapping tiles with blended seams, in space and in time: run any SR network on frames larger, and clips
longer, than memory allows.

``tiled_forward`` cuts the LR input into ``tile`` x ``tile`` tiles overlapping by ``overlap`` pixels, runs
``fn`` on each (padded to the network's size ``multiple``), and blends the upscaled tiles with weights that
ramp linearly across each overlap, so seams do not show. Shared by validation, the inference scripts and
video upscaling.

Time is one more tiled axis, with the same start positions and the same ramps: ``chunk`` / ``chunk_overlap``
cut a (B, T, C, H, W) clip into overlapping runs of frames for recurrent networks. ``stream_forward`` is that
temporal tiling over a frame *iterator*: it reads frames lazily and yields each output frame as soon as no
later chunk can change it, so memory holds about one chunk whatever the clip length; ``tiled_forward`` with
``chunk`` is ``stream_forward`` over the clip's frames, so both give identical results.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
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
                  overlap: int = 16, multiple: int = 1, chunk: int | None = None,
                  chunk_overlap: int = 0) -> torch.Tensor:
    """Apply ``fn`` (LR (..., C, h, w) -> SR (..., C', h*scale, w*scale)) tile by tile; see module docstring.

    ``tile=None`` (or a tile covering the whole input) is one padded call. Leading dims (batch, time) pass
    through, so recurrent video networks tile the same way as image networks. ``chunk``: ``x`` is
    (B, T, C, h, w) and ``fn`` sees at most ``chunk`` frames at a time, consecutive chunks sharing
    ``chunk_overlap`` frames that are blended like tile seams (see :func:`stream_forward`).
    """
    if chunk is not None:
        if x.dim() != 5:
            raise ValueError(f'temporal chunking needs a (B, T, C, H, W) input, got shape {tuple(x.shape)}')
        frames = stream_forward(lambda clip: fn(clip.movedim(0, 1)).movedim(1, 0), x.unbind(1), scale, chunk,
                                chunk_overlap, tile, overlap, multiple)
        return torch.stack(list(frames), dim=1)
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


def stream_forward(fn: Callable[[torch.Tensor], torch.Tensor], frames: Iterable[torch.Tensor], scale: int,
                   chunk: int, chunk_overlap: int = 0, tile: int | None = None, overlap: int = 16,
                   multiple: int = 1) -> Iterator[torch.Tensor]:
    """Run ``fn`` over overlapping temporal chunks of a frame stream; yield the output frames in order.

    frames: tensors of one shape (..., C, h, w) (a frame, or a window of frames); ``fn`` maps them stacked
    along a new first dim, (t, ..., C, h, w) with t <= ``chunk``, to (t, ..., C', h*scale, w*scale). Chunks
    start every ``chunk - chunk_overlap`` frames, the last one ends at the last frame (as tiles do); frames
    covered by two chunks are blended with linear ramps over ``chunk_overlap`` frames. Each chunk is tiled in
    space by :func:`tiled_forward` (``tile``, ``overlap``, ``multiple``). One frame of look-ahead tells whether
    a chunk is the last, so a stream of unknown length is handled. A frame is output once the next chunk's
    start is known, so at most ``2 * chunk - chunk_overlap + 1`` frames are read ahead of the output: memory
    is bounded by the chunk, not by the clip.
    """
    if chunk < 1 or not 0 <= chunk_overlap < chunk:
        raise ValueError(f'chunk must be >= 1 and 0 <= chunk_overlap < chunk, got chunk={chunk}, '
                         f'chunk_overlap={chunk_overlap}')
    source = iter(frames)
    inputs: dict[int, torch.Tensor] = {}
    sums: dict[int, torch.Tensor] = {}
    weights: dict[int, float] = {}
    read = emitted = start = 0

    def read_until(count: int) -> None:
        nonlocal read
        while read < count:
            frame = next(source, None)
            if frame is None:
                return
            inputs[read] = frame
            read += 1

    def emit_until(end: int) -> Iterator[torch.Tensor]:
        nonlocal emitted
        while emitted < end:
            yield sums.pop(emitted) / weights.pop(emitted)
            emitted += 1

    first = True
    while True:
        read_until(start + chunk + 1)
        if read == 0:
            return
        last = read <= start + chunk
        if last:  # the last chunk ends at the last frame, possibly overlapping its predecessor more
            start = max(0, read - chunk)
        yield from emit_until(start)
        for index in [i for i in inputs if i < start]:
            del inputs[index]
        indices = range(start, min(start + chunk, read))
        out = tiled_forward(fn, torch.stack([inputs[i] for i in indices]), scale, tile, overlap, multiple)
        ramp = _ramp(len(indices), chunk_overlap, at_start=first, at_end=last)
        for offset, index in enumerate(indices):
            weight = float(ramp[offset])
            contribution = out[offset].float() * weight
            if index in sums:
                sums[index] += contribution
                weights[index] += weight
            else:
                sums[index], weights[index] = contribution, weight
        if last:
            yield from emit_until(read)
            return
        first = False
        start += chunk - chunk_overlap
