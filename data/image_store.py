"""The one image store every dataset reads through: images addressed by key, from a BasicSR lmdb or a folder.

A key is an image's path relative to its data root without the extension (``000/00000000`` for REDS,
``00001/0001/im4`` for Vimeo-90K, ``0801`` for DIV2K); the same key addresses an lmdb value and a file under the
folder, so every dataset works on both backends unchanged. On disk a store either names its files
``<root>/<key>.<ext>`` (frame folders: one extension, nothing to scan) or, with ``ext=None``, takes every image
under the root whatever its suffix (:data:`~vsrkit.data.image_decode.IMG_EXTENSIONS`; one scan when the store
is built). Either way the bytes are decoded by :func:`~vsrkit.data.image_decode.decode_image` — 8-bit RGB PNGs
by libdeflate + libspng, only down to the rows asked for, the rest by OpenCV — and a sample's images
concurrently, so lmdb and disk give bit-identical uint8 BGR arrays.

Errors name the key, the file or lmdb, and what was expected.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from vsrkit.data.image_decode import IMG_EXTENSIONS, PNG_HEADER_BYTES, decode_image, parallel_map, png_header
from vsrkit.data.lmdb_io import LmdbImageReader, read_meta_info

__all__ = ['ImageStore', 'open_image_store', 'option', 'natural_key', 'BACKENDS']

BACKENDS = ('disk', 'lmdb')


def natural_key(text: str) -> list:
    """Sort key that orders ``im2`` before ``im10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text)]


def option(opt: dict, key: str, owner: str):
    """``opt[key]``, or a KeyError saying which dataset needs which option."""
    if opt.get(key) is None:
        raise KeyError(f"{owner} needs the option '{key}' (got options {sorted(opt)}).")
    return opt[key]


def _clip_of(key: str) -> str:
    return key.rsplit('/', 1)[0] if '/' in key else ''


class ImageStore:
    """Images of one data root, addressed by key: an lmdb (``backend='lmdb'``) or image files (``'disk'``:
    ``<root>/<key>.<ext>``, or with ``ext=None`` any image file under ``root``). Picklable and cheap to copy
    into DataLoader workers.

    ``threads``: decoding threads per :meth:`read` (None: :func:`vsrkit.data.image_decode.decode_threads`).
    """

    def __init__(self, root: str | os.PathLike, backend: str = 'disk', ext: str | None = 'png',
                 threads: int | None = None):
        self.root, self.backend, self.threads = Path(root), backend, threads
        self.ext = None if ext is None else ext.lstrip('.')
        self._files: dict[str, Path] = {}  # ext=None on disk: key -> file, from the one scan
        if backend == 'lmdb':
            self._reader = LmdbImageReader(self.root)
            self._shapes = {m.key: m.shape for m in read_meta_info(self.root)}  # also: FileNotFoundError early
        elif backend == 'disk':
            if not self.root.is_dir():
                raise FileNotFoundError(f'Data root {self.root} does not exist (or is not a folder).')
            if self.ext is None:
                self._files = self._scan()
        else:
            raise ValueError(f'io_backend type must be one of {list(BACKENDS)}, got {backend!r} (data root {root}).')

    def __repr__(self) -> str:
        return f'{type(self).__name__}({str(self.root)!r}, {self.backend!r})'

    def _scan(self) -> dict[str, Path]:
        """key -> file of every image under ``root``; two files of one key (``a.png``, ``a.jpg``) are an error."""
        files: dict[str, Path] = {}
        for file in sorted(self.root.rglob('*')):
            if file.suffix.lower() in IMG_EXTENSIONS and file.is_file():
                key = file.relative_to(self.root).with_suffix('').as_posix()
                if key in files:
                    raise ValueError(f'{files[key]} and {file} are both image {key!r} under {self.root}: '
                                     'keep one of them.')
                files[key] = file
        if not files:
            raise FileNotFoundError(f'No images ({", ".join(IMG_EXTENSIONS)}) under {self.root}.')
        return files

    def path(self, key: str) -> str:
        """Where ``key`` lives: the lmdb key itself (as basicsr's lmdb datasets report it) or the file path."""
        if self.backend == 'lmdb':
            return key
        if self.ext is not None:
            return str(self.root / f'{key}.{self.ext}')
        if key not in self._files:
            raise FileNotFoundError(f'No image {key!r} under {self.root} (none of {", ".join(IMG_EXTENSIONS)}).')
        return str(self._files[key])

    def where(self, key: str) -> str:
        """``key`` for messages: its file, or the key and the lmdb holding it."""
        return f'{key!r} in the lmdb {self.root}' if self.backend == 'lmdb' else self.path(key)

    def keys(self) -> list[str]:
        """Every key stored (lmdb: in meta_info.txt order; disk: sorted). Lists the lmdb only where the store was
        built: the per-key shapes stay behind when it is pickled into DataLoader workers."""
        if self.backend == 'lmdb':
            return list(self._shapes)
        return self._disk_keys()

    def _disk_keys(self, folders: Iterable[str] | None = None) -> list[str]:
        """Sorted keys of the images on disk, all or those directly in ``folders`` (clip names)."""
        if self.ext is None:
            wanted = None if folders is None else set(folders)
            return sorted(k for k in self._files if wanted is None or _clip_of(k) in wanted)
        pattern = f'*.{self.ext}'
        files = self.root.rglob(pattern) if folders is None else [f for n in folders for f in (self.root / n).glob(pattern)]
        return sorted(f.relative_to(self.root).with_suffix('').as_posix() for f in files)

    def read(self, keys: Iterable[str], rows: int | None = None) -> list[np.ndarray]:
        """uint8 HWC BGR images (alpha dropped, grey repeated, 16 bits scaled down: OpenCV's IMREAD_COLOR),
        decoded on ``threads`` threads; ``rows``: only the top rows are needed (a crop's bottom), and PNGs
        decode only those."""
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
            raise FileNotFoundError(f'Cannot read image {path} (key {key!r}): no such file.') from None

    def shape(self, key: str) -> tuple[int, int, int]:
        """(H, W, C) of an image: in an lmdb, as stored (meta_info.txt: C is 1 for a grey image, which :meth:`read`
        still gives as 3 channels; callers compare it with other meta_info shapes); on disk, as :meth:`read` decodes
        it (3 channels), sized from a PNG's header or else by decoding."""
        if self.backend == 'lmdb':
            if key not in self._shapes:
                raise KeyError(f'Key {key!r} is not listed in {self.root / "meta_info.txt"} (lmdb {self.root}).')
            return self._shapes[key]
        header = png_header(self._read_file(key, PNG_HEADER_BYTES))
        return (header.height, header.width, 3) if header is not None else self.read([key])[0].shape

    def list_clips(self, names: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Keys per clip (the folder holding the image: ``000`` for ``000/00000000``), naturally sorted.

        ``names`` restricts (and on disk with one extension, speeds up) the listing; a clip without images is an
        error.
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
            clips = {}
            for key in self._disk_keys(names):
                clips.setdefault(_clip_of(key), []).append(key)
            wanted = names if names is not None else sorted(clips, key=natural_key)
            missing = [n for n in wanted if n not in clips]
            if missing or not clips:
                kind = f'*.{self.ext}' if self.ext is not None else 'image'
                raise FileNotFoundError(f'No {kind} frames for clip(s) {missing[:5] or "any"} under {self.root}.')
            clips = {n: clips[n] for n in wanted}
        return {name: sorted(keys, key=natural_key) for name, keys in clips.items()}

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` is listed (lmdb: in meta_info.txt; see :meth:`check_keys` for what is stored)."""
        if self.backend == 'lmdb':
            return key in self._shapes
        return key in self._files if self.ext is None else os.path.isfile(self.path(key))

    def check_keys(self, keys: Iterable[str]) -> None:
        """KeyError / FileNotFoundError for the first key that is not stored, naming it and the root."""
        if self.backend == 'disk':
            for key in keys:
                if key not in self:
                    raise FileNotFoundError(f'Image {self.path(key) if self.ext else repr(key)} (key {key!r}) does '
                                            f'not exist under {self.root}.')
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
        return {**self.__dict__, '_shapes': {}} if self.backend == 'lmdb' else dict(self.__dict__)


def open_image_store(opt: dict, root_key: str, owner: str, ext: str | None = 'png') -> ImageStore:
    """The store of the data root ``opt[root_key]`` as a dataset's options describe it: ``io_backend``
    ({type: disk|lmdb}, default disk), ``filename_ext`` (disk; default ``ext``, None = any image suffix) and
    ``decode_threads`` (positive int, or null: automatic). Errors name ``owner`` and the option at fault."""
    threads = opt.get('decode_threads')
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f'{owner}: decode_threads must be a positive integer or null (automatic), got {threads!r}.')
    backend = (opt.get('io_backend') or {}).get('type', 'disk')
    return ImageStore(option(opt, root_key, owner), backend, opt.get('filename_ext', ext), threads)
