"""Decoding stored frames: libspng for 8-bit RGB PNGs, OpenCV for everything else, many frames in parallel.

Why this module exists: decoding PNGs is ~90 % of the cost of a video training sample (a REDS clip is 16 full
720x1280 or 360x640 PNGs per sample, cropped to 256 only afterwards). libspng (through ``imagecodecs``) decodes
8-bit PNGs ~1.5x faster than the libpng inside OpenCV, bit-identically (PNG is lossless; tested), and both
release the GIL, so the frames of one sample decode concurrently in a thread pool.

Results follow basicsr's ``imfrombytes`` / ``cv2.imdecode`` conventions whatever the decoder: ``'color'`` gives
uint8 (H, W, 3) BGR (alpha dropped, grey repeated), ``'grayscale'`` (H, W), ``'unchanged'`` what is stored.
"""
from __future__ import annotations

import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import cv2
import imagecodecs
import numpy as np
import torch.utils.data

__all__ = ['decode_image', 'parallel_map', 'decode_threads']

READ_FLAGS = {'color': cv2.IMREAD_COLOR, 'grayscale': cv2.IMREAD_GRAYSCALE, 'unchanged': cv2.IMREAD_UNCHANGED}
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_T = TypeVar('_T')
_R = TypeVar('_R')


def _is_rgb8_png(buffer: bytes | memoryview) -> bool:
    """An 8-bit truecolour PNG without alpha: the format BasicSR's and our lmdb writers store (IHDR fields)."""
    if len(buffer) < 33 or bytes(buffer[:8]) != _PNG_SIGNATURE or bytes(buffer[12:16]) != b'IHDR':
        return False
    bit_depth, colour_type = struct.unpack('>BB', bytes(buffer[24:26]))
    return bit_depth == 8 and colour_type == 2


def decode_image(buffer: bytes | memoryview, flag: str = 'color', *, source: str = '') -> np.ndarray:
    """Decode encoded image bytes like basicsr's ``imfrombytes`` (uint8 HWC BGR for 'color').

    ValueError naming ``source`` (a file or an lmdb key) when the bytes are not a decodable image.
    """
    if flag not in READ_FLAGS:
        raise ValueError(f"flag must be one of {sorted(READ_FLAGS)}, got {flag!r}.")
    if flag == 'color' and _is_rgb8_png(buffer):
        try:
            rgb = imagecodecs.spng_decode(buffer)
        except imagecodecs.SpngError as err:
            raise ValueError(f'Cannot decode the image {source or "<bytes>"}: corrupt PNG ({err}; '
                             f'{len(buffer)} bytes).') from None
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=rgb)  # in place: no second full-frame array
    img = cv2.imdecode(np.frombuffer(buffer, np.uint8), READ_FLAGS[flag])
    if img is None:
        raise ValueError(f'Cannot decode the image {source or "<bytes>"}: not a valid encoded image '
                         f'({len(buffer)} bytes).')
    return img


def decode_threads() -> int:
    """Threads for decoding in this process: the usable cores, shared among the DataLoader's workers
    (in a worker: cores // num_workers, at least 1), so workers x threads never oversubscribes the CPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    worker = torch.utils.data.get_worker_info()
    return max(1, cores // worker.num_workers) if worker is not None else cores


# (pid, threads) -> pool. The pid is part of the key: a forked DataLoader worker inherits the dict but not the
# pool's threads, so it must build its own.
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def parallel_map(fn: Callable[[_T], _R], items: Sequence[_T], threads: int | None = None) -> list[_R]:
    """``[fn(x) for x in items]`` on ``threads`` threads (default :func:`decode_threads`); for functions that
    release the GIL (decoding, file reads). The first exception propagates."""
    threads = decode_threads() if threads is None else threads
    if threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    key = (os.getpid(), threads)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix='vsrkit-decode')
    return list(pool.map(fn, items))
