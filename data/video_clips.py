"""What the video datasets share: clip lists, the LR/GT size check run at construction, frames to tensors.

A clip is a name plus the ordered keys of its frames. A key is a frame's path relative to a data root without
the extension (``000/00000000`` for REDS, ``00001/0001/im4`` for Vimeo-90K, ``calendar/0003`` for Vid4); the
frames are read through :class:`vsrkit.data.image_store.ImageStore` (the same key addresses an lmdb value and
the file ``<root>/<key>.<filename_ext>`` on disk), so every dataset works on both backends unchanged.

Everything that can be wrong with the data (a missing key, meta_info that disagrees with the lmdb, a clip too
short, LR/GT sizes that disagree with ``scale``) is found here, when a dataset is built, rather than mid-training
inside a DataLoader worker.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import torch

from vsrkit.data.image_store import ImageStore

__all__ = ['ClipMeta', 'Clip', 'read_clip_meta_info', 'frames_to_tensor', 'check_scale']

_CLIP_LINE = re.compile(r'^(?P<name>\S+)(?:\s+(?P<n>\d+))?(?:\s+\((?P<h>\d+),\s*(?P<w>\d+),\s*(?P<c>\d+)\))?\s*$')


class ClipMeta(NamedTuple):
    """One line of a dataset ``meta_info_file`` (BasicSR's format: ``000 100 (720,1280,3)``)."""
    name: str
    num_frames: int | None
    shape: tuple[int, int, int] | None


class Clip(NamedTuple):
    name: str
    keys: list[str]


def read_clip_meta_info(path: str | os.PathLike) -> list[ClipMeta]:
    """Parse a dataset meta_info file: ``<clip> [<num_frames> [(<h>,<w>,<c>)]]`` per line.

    BasicSR writes ``000 100 (720,1280,3)`` (REDS) and ``00001/0001 7 (256,448,3)`` (Vimeo-90K); a bare clip
    name per line (``sep_testlist.txt``) is accepted too. Errors name the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'meta_info_file {path} does not exist.')
    clips = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = _CLIP_LINE.match(line.strip())
        if match is None:
            raise ValueError(f'{path}, line {number}: expected "<clip> <num_frames> (<h>,<w>,<c>)" like '
                             f'"000 100 (720,1280,3)", got {line!r}.')
        shape = (int(match['h']), int(match['w']), int(match['c'])) if match['h'] else None
        clips.append(ClipMeta(match['name'], int(match['n']) if match['n'] else None, shape))
    if not clips:
        raise ValueError(f'meta_info_file {path} lists no clips.')
    return clips


def check_scale(gt: ImageStore, lq: ImageStore, clips: Iterable[Clip], scale: int) -> None:
    """Every clip's GT frame size must be ``scale`` x its LQ size (all frames for lmdb; the first on disk)."""
    for clip in clips:
        keys = clip.keys if gt.backend == 'lmdb' and lq.backend == 'lmdb' else clip.keys[:1]
        for key in keys:
            (hg, wg, _), (hl, wl, _) = gt.shape(key), lq.shape(key)
            if (hg, wg) != (hl * scale, wl * scale):
                raise ValueError(f'Clip {clip.name!r}: GT frame {gt.path(key)} in {gt.root} is {hg}x{wg} but the LQ '
                                 f'frame in {lq.root} is {hl}x{wl}; with scale={scale} the GT must be '
                                 f'{hl * scale}x{wl * scale}.')


def frames_to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC BGR frames -> float (T, C, H, W) RGB in [0, 1], bit-identical to basicsr's ``img / 255.``.

    One stack and one conversion of the (cropped) uint8 frames: converting to float32 before cropping, as
    basicsr's datasets do, costs a full-frame float copy per frame. The conversion runs in numpy because torch
    would split this (large) tensor over its intra-op threads, which is slower in a busy data-loading process.
    """
    rgb = np.stack(frames)[..., ::-1].transpose(0, 3, 1, 2)
    out = np.empty(rgb.shape, np.float32)
    np.divide(rgb, np.float32(255.), out=out, dtype=np.float32)
    return torch.from_numpy(out)
