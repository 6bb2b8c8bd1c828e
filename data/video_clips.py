"""What the video datasets share: clip lists, frame stores (lmdb or disk) and the checks run at construction.

A clip is a name plus the ordered keys of its frames. A key is a frame's path relative to a data root without
the extension (``000/00000000`` for REDS, ``00001/0001/im4`` for Vimeo-90K, ``calendar/0003`` for Vid4); the
same key addresses an lmdb value and the file ``<root>/<key>.<filename_ext>`` on disk, so every dataset works
on both backends unchanged.

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

from vsrkit.data.image_decode import decode_image, parallel_map, png_size
from vsrkit.data.lmdb_io import LmdbImageReader, read_meta_info

__all__ = ['ClipMeta', 'Clip', 'read_clip_meta_info', 'FrameStore', 'make_frame_store', 'frames_to_tensor',
           'natural_key', 'check_scale', 'option']

_CLIP_LINE = re.compile(r'^(?P<name>\S+)(?:\s+(?P<n>\d+))?(?:\s+\((?P<h>\d+),\s*(?P<w>\d+),\s*(?P<c>\d+)\))?\s*$')


class ClipMeta(NamedTuple):
    """One line of a dataset ``meta_info_file`` (BasicSR's format: ``000 100 (720,1280,3)``)."""
    name: str
    num_frames: int | None
    shape: tuple[int, int, int] | None


class Clip(NamedTuple):
    name: str
    keys: list[str]


def option(opt: dict, key: str, owner: str):
    """``opt[key]``, or a KeyError saying which dataset needs which option."""
    if opt.get(key) is None:
        raise KeyError(f"{owner} needs the option '{key}' (got options {sorted(opt)}).")
    return opt[key]


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


def natural_key(text: str) -> list:
    """Sort key that orders ``im2`` before ``im10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text)]


def _clip_of(key: str) -> str:
    return key.rsplit('/', 1)[0] if '/' in key else ''


class FrameStore:
    """Frames of one data root, addressed by key, from an lmdb (``io_backend.type: lmdb``) or image files
    (``disk``: ``<root>/<key>.<ext>``). Picklable and cheap to copy into DataLoader workers."""

    def __init__(self, root: str | os.PathLike, backend: str, ext: str = 'png', threads: int | None = None):
        self.root, self.backend, self.ext, self.threads = Path(root), backend, ext.lstrip('.'), threads
        if backend == 'lmdb':
            self._reader = LmdbImageReader(self.root)
            self._shapes = {m.key: m.shape for m in read_meta_info(self.root)}  # also: FileNotFoundError early
        elif backend == 'disk':
            if not self.root.is_dir():
                raise FileNotFoundError(f'Data root {self.root} does not exist.')
        else:
            raise ValueError(f"io_backend type must be 'lmdb' or 'disk', got {backend!r}.")

    def __repr__(self) -> str:
        return f'{type(self).__name__}({str(self.root)!r}, {self.backend!r})'

    def path(self, key: str) -> str:
        """Where ``key`` lives: the lmdb key itself or the file path."""
        return key if self.backend == 'lmdb' else str(self.root / f'{key}.{self.ext}')

    def read(self, keys: Iterable[str], rows: int | None = None) -> list[np.ndarray]:
        """uint8 HWC BGR frames, decoded on ``threads`` threads (None: see
        :func:`vsrkit.data.image_decode.decode_threads`); ``rows``: only the top rows are needed (a crop's
        bottom), and PNGs decode only those."""
        if self.backend == 'lmdb':
            return self._reader.get_images(keys, threads=self.threads, rows=rows)
        return parallel_map(lambda key: decode_image(self._read_file(key), source=self.path(key), rows=rows),
                            list(keys), self.threads)

    def _read_file(self, key: str, size: int = -1) -> bytes:
        path = self.path(key)
        try:
            with open(path, 'rb') as file:
                return file.read(size)
        except FileNotFoundError:
            raise FileNotFoundError(f'Cannot read frame {path} (key {key!r}): no such file.') from None

    def shape(self, key: str) -> tuple[int, int, int]:
        """(H, W, C) of a frame: from meta_info (lmdb); on disk, as :meth:`read` decodes it (3 channels), sized
        from a PNG's header or else by decoding."""
        if self.backend == 'lmdb':
            return self._shapes[key]
        size = png_size(self._read_file(key, 24))
        return (*size, 3) if size is not None else self.read([key])[0].shape

    def list_clips(self, names: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Frame keys per clip, naturally sorted: from the lmdb's meta_info.txt or a scan of the folders.

        ``names`` restricts (and on disk speeds up) the listing; a clip without frames is an error.
        """
        names = None if names is None else list(names)
        if self.backend == 'lmdb':
            clips: dict[str, list[str]] = {}
            for key in self._shapes:
                clips.setdefault(_clip_of(key), []).append(key)
            if names is not None:
                missing = [n for n in names if n not in clips]
                if missing:
                    raise KeyError(f'Clip(s) {missing[:5]} have no keys in the lmdb {self.root} '
                                   f'(its meta_info.txt lists clips like {sorted(clips)[:3]}).')
                clips = {n: clips[n] for n in names}
        else:
            pattern = f'*.{self.ext}'
            if names is None:
                files = self.root.rglob(pattern)
            else:
                files = [f for n in names for f in (self.root / n).glob(pattern)]
            clips = {}
            for file in files:
                key = file.relative_to(self.root).with_suffix('').as_posix()
                clips.setdefault(_clip_of(key), []).append(key)
            wanted = names if names is not None else sorted(clips, key=natural_key)
            missing = [n for n in wanted if n not in clips]
            if missing or not clips:
                raise FileNotFoundError(f'No {pattern} frames for clip(s) {missing[:5] or "any"} under {self.root}.')
            clips = {n: clips[n] for n in wanted}
        return {name: sorted(keys, key=natural_key) for name, keys in clips.items()}

    def check_keys(self, keys: Iterable[str]) -> None:
        """KeyError / FileNotFoundError for the first key that is not stored, naming it and the root."""
        if self.backend == 'disk':
            for key in keys:
                if not os.path.isfile(self.path(key)):
                    raise FileNotFoundError(f'Frame {self.path(key)} (key {key!r}) does not exist.')
            return
        keys = list(keys)
        for key in keys:
            if key not in self._shapes:
                raise KeyError(f'Key {key!r} is not listed in {self.root / "meta_info.txt"} '
                               f'(lmdb {self.root}).')
        with self._reader.env.begin(buffers=True) as txn:  # meta_info.txt must match what is actually stored
            for key in keys:
                if txn.get(key.encode('ascii')) is None:
                    raise KeyError(f'Key {key!r} is listed in meta_info.txt but not stored in the lmdb {self.root}.')

    def __getstate__(self) -> dict:
        # the per-key shapes are only needed for the construction-time checks
        return {**self.__dict__, '_shapes': {}}


def make_frame_store(opt: dict, root_key: str, owner: str) -> FrameStore:
    io_backend = opt.get('io_backend') or {'type': 'disk'}
    threads = opt.get('decode_threads')
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f'{owner}: decode_threads must be a positive integer or null (automatic), got {threads!r}.')
    return FrameStore(option(opt, root_key, owner), io_backend.get('type', 'disk'), opt.get('filename_ext', 'png'),
                      threads)


def check_scale(gt: FrameStore, lq: FrameStore, clips: Iterable[Clip], scale: int) -> None:
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
