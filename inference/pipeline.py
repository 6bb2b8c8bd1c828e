"""Decode → network → encode in three threads joined by bounded queues, so memory does not grow with the clip.

The network runs in the calling thread over :func:`vsrkit.utils.tiling.stream_forward` (batches of frames,
sliding windows or overlapping recurrent chunks, each tiled in space); the decoder and the encoder run beside
it. Alpha channels are upscaled apart from the colour, with MATLAB bicubic
(:func:`vsrkit.utils.color.bicubic_upscale`), and written where the output keeps them. On success the writer's
file is renamed into place; on any exception (KeyboardInterrupt included) the temporary output is removed.
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vsrkit.inference.frame_model import FrameModel, TilePlan, from_float, sliding_windows, to_float
from vsrkit.inference.video_io import FrameSource, Log, Writer
from vsrkit.utils.color import bicubic_upscale
from vsrkit.utils.tiling import stream_forward

QUEUE_FRAMES = 8
_END = object()


class _Failure:
    """An exception raised in a worker thread, carried to the main thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless ``stop`` is set (polling, so a stopped consumer cannot block the producer forever)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _reader(source: FrameSource, q: queue.Queue, stop: threading.Event) -> None:
    try:
        for frame in source.frames():
            if not _put(q, frame, stop):
                return
        _put(q, _END, stop)
    except BaseException as err:  # noqa: BLE001  (re-raised in the main thread)
        _put(q, _Failure(err), stop)


def _writer(writer: Writer, q: queue.Queue, stop: threading.Event, errors: list) -> None:
    try:
        while True:
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if item is _END:
                writer.close()
                return
            writer.write(*item)
    except BaseException as err:  # noqa: BLE001  (re-raised in the main thread)
        errors.append(err)
        stop.set()


def output_format(source: FrameSource, writer: Writer, log: Log) -> tuple[type, bool]:
    """(sample dtype of the written frames, whether alpha is written), with one line for what the output
    cannot keep."""
    dtype, alpha = source.dtype, source.has_alpha
    if source.bits > writer.max_bits:
        log(f'note: {source.path} has {source.bits}-bit samples; {writer.target} keeps {writer.max_bits} bits '
            '(a folder output keeps 16-bit PNGs)')
        if writer.max_bits == 8:
            dtype = np.uint8
    if alpha and not writer.keeps_alpha:
        log(f'note: the alpha channel of {source.path} is dropped: {writer.target} has none '
            '(a folder output keeps RGBA PNGs)')
        alpha = False
    return dtype, alpha


def upscale_alpha(alpha: np.ndarray, scale: int, dtype: type) -> np.ndarray:
    """Alpha (h, w) → (h·scale, w·scale) of ``dtype`` by MATLAB bicubic."""
    return from_float(bicubic_upscale(to_float(alpha), scale), dtype)


def upscale_video(model: FrameModel, source: FrameSource, writer: Writer, batch: int = 4, chunk: int = 16,
                  chunk_overlap: int = 4, tiles: TilePlan | None = None, window_padding: str = 'reflection',
                  progress: bool = True, log: Log = print) -> int:
    """Upscale every frame of ``source`` into ``writer``; returns the number of frames (module docstring)."""
    stop = threading.Event()
    frames_in: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    frames_out: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_reader, args=(source, frames_in, stop), daemon=True, name='decode'),
               threading.Thread(target=_writer, args=(writer, frames_out, stop, errors), daemon=True,
                                name='encode')]
    dtype, keep_alpha = output_format(source, writer, log)
    pending: deque = deque()  # (pts, extra, alpha) of frames given to the network, in order

    def inputs() -> Iterator[torch.Tensor]:
        while True:
            item = frames_in.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            tensor, extra = model.prepare(item.image)
            pending.append((item.pts, extra, item.alpha if keep_alpha else None))
            yield tensor

    io = model.io
    stream = inputs()
    if io.temporal == 'window':
        stream = sliding_windows(stream, io.window, window_padding)
    size, overlap = (chunk, chunk_overlap) if io.temporal == 'clip' else (batch, 0)
    tiles = tiles or TilePlan(None, 0, 'whole frames')
    count = 0
    bar = tqdm(total=source.num_frames, unit='frame', disable=not progress, dynamic_ncols=True)
    try:
        for thread in threads:
            thread.start()
        with torch.inference_mode():
            for out in stream_forward(model.chunk_fn(), stream, io.scale, size, overlap, tiles.tile,
                                      tiles.overlap, io.multiple):
                pts, extra, alpha = pending.popleft()
                image = model.finish(out, extra, dtype)
                if alpha is not None:
                    alpha = upscale_alpha(alpha, model.scale, dtype)
                if not _put(frames_out, (image, pts, alpha), stop):
                    break
                count += 1
                bar.update()
        if errors:
            raise errors[0]
        if count == 0:
            raise ValueError(f'{source.path}: no video frames could be decoded')
        _put(frames_out, _END, stop)
        threads[1].join()
        if errors:
            raise errors[0]
        writer.commit()
        return count
    except BaseException:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=10)
        writer.discard()
        raise
    finally:
        bar.close()
