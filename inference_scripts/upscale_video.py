#!/usr/bin/env python
"""Upscale a video (or a folder of frames) with any registered SR network, streaming, in bounded memory.

Usage:
    vsrkit-upscale INPUT OUTPUT --model CKPT [--opt YML | --arch NAME] [--scale S] [--tile N --tile-overlap N]
                   [--chunk N --chunk-overlap N] [--batch N] [--device cpu|cuda] [--dtype fp32|fp16|bf16]
                   [--crf N] [--preset NAME] [--fps F] [--window-padding MODE] [--no-audio]

INPUT: a video file (mp4, mkv, avi, mov, ...) or a folder of frames (png/jpg/bmp/tif, sorted by name; ``--fps``,
default 25, sets their timing). OUTPUT: a video file (.mp4, also .mkv/.mov: H.264, yuv420p) or a folder (PNG
frames ``00000000.png`` ...; exact, lossless). The architecture is detected from the checkpoint
(:mod:`vsrkit.archs.loader`); ``--opt`` (an options YAML's network_g) or ``--arch`` overrides it.

What is kept: the frame count; every frame's timestamp (each output frame is written with its input frame's pts
in the input stream's time base, so variable frame rate survives; a folder gets pts = index in 1/fps); the
first audio stream, remuxed packet by packet without re-encoding (``--no-audio`` drops it; a codec the output
container cannot hold is reported, e.g. PCM in .mp4: use .mkv). Colours: frames are decoded to RGB24 and
encoded from RGB24 by FFmpeg's swscale (BT.601), network outputs are clamped to [0, 1] and *rounded* to uint8.
yuv420p needs an even width and height: an odd output size is padded by one replicated row/column at the
bottom/right (PNG output keeps the exact size).

How each kind of network is fed (``ModelIO`` of the architecture):
- single-frame networks (ViTSR, ELSR, Grey2RGBAutoEncoder, VDSR): ``--batch`` frames per call; grey-input
  networks get the BT.601 luma, one-channel outputs are written as grey; VDSR gets the Y channel of the bicubic
  (``--scale``) upscale and its output is recombined with the bicubic Cb/Cr;
- sliding-window networks (EDVR): each frame with its neighbours, edge frames padded as BasicSR does
  (``--window-padding``, default 'reflection');
- recurrent networks (BasicVSR, IconVSR, MIAVSR, IIAVSR, ConvLSTM): overlapping chunks of ``--chunk`` frames
  sharing ``--chunk-overlap`` frames, blended (:func:`vsrkit.utils.tiling.stream_forward`); frames smaller than
  a network's minimum (BasicVSR/IconVSR: 64 px) are replicate-padded and the output cropped. ConvLSTM writes
  what it computes: for each input frame t, its prediction of the in-between frame after t (grey).
Every call can be cut into ``--tile`` x ``--tile`` overlapping tiles with blended seams, padded to the network's
size multiple (for VDSR the tiles are in pixels of the bicubic-upscaled frame). Decoding, the network and
encoding run in three threads joined by bounded queues, so memory does not grow with the clip.
``--dtype fp16/bf16`` runs the network under autocast (CUDA; bf16 also on CPU).

Safety: the output is written under a temporary name in the output's folder and renamed only when complete; an
error or Ctrl-C removes it. Errors (unreadable input, no frames, an unwritable output, bad options) print one
line and exit 1; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import os
import queue
import secrets
import shutil
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.data.data_util import generate_frame_indices
from basicsr.utils.color_util import rgb2ycbcr_pt
from vsrkit.archs.loader import ModelIO, load_model
from vsrkit.utils.tiling import stream_forward

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
CONTAINER_FORMATS = {'.mp4': 'mp4', '.mkv': 'matroska', '.mov': 'mov'}
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
LUMA = (0.299, 0.587, 0.114)  # BT.601, the weights of basicsr's Y (without its 16..235 offset)
# Inverse of basicsr's rgb2ycbcr (BT.601, studio swing; its ycbcr2rgb on values in [0, 255]).
YCBCR_TO_RGB = torch.tensor([[0.00456621, 0.00456621, 0.00456621], [0, -0.00153632, 0.00791071],
                             [0.00625893, -0.00318811, 0]]) * 255.0
YCBCR_TO_RGB_OFFSET = torch.tensor([-222.921, 135.576, -276.836])
QUEUE_FRAMES = 8
_END = object()


@dataclass
class Frame:
    """A decoded RGB24 frame and its timing."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    pts: int


class _Failure:
    """An exception raised in a worker thread, carried to the main thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


# ----------------------------------------------------------------------------------------------- input
class FrameSource:
    """Frames of a video file or an image folder, with the timing of the output stream.

    Attributes: time_base (Fraction), rate (Fraction, nominal fps), num_frames (int or None when unknown),
    audio (bool: the file has an audio stream).
    """

    def __init__(self, path: str | Path, fps: float = 25.0) -> None:
        self.path = Path(path)
        self.audio = False
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise ValueError(f'{self.path}: no frames (no {"/".join(IMAGE_SUFFIXES)} files)')
            self.rate = Fraction(fps).limit_denominator(1001)
            self.time_base = 1 / self.rate
            self.num_frames: int | None = len(self.files)
            return
        if not self.path.is_file():
            raise FileNotFoundError(f'input {self.path} does not exist')
        self.files = []
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise ValueError(f'{self.path}: no video stream')
                stream = container.streams.video[0]
                self.time_base = stream.time_base or Fraction(1, 25)
                self.rate = stream.average_rate or stream.guessed_rate or Fraction(25)
                self.num_frames = stream.frames or None
                self.audio = bool(container.streams.audio)
        except av.FFmpegError as err:
            raise ValueError(f'cannot read video {self.path}: {err}') from None

    def frames(self) -> Iterator[Frame]:
        if self.files:
            yield from self._folder_frames()
            return
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = 'AUTO'
                previous = None
                step = max(1, round(1 / (self.rate * self.time_base))) if self.rate else 1
                for frame in container.decode(stream):
                    pts = frame.pts if frame.pts is not None else (previous + step if previous is not None else 0)
                    # The encoder needs strictly increasing timestamps (a duplicated pts would drop a frame).
                    pts = pts if previous is None or pts > previous else previous + 1
                    previous = pts
                    yield Frame(frame.to_ndarray(format='rgb24'), pts)
        except av.FFmpegError as err:
            raise ValueError(f'cannot decode video {self.path}: {err}') from None

    def _folder_frames(self) -> Iterator[Frame]:
        size = None
        for index, path in enumerate(self.files):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # grey images come back as 3 equal channels
            if image is None:
                raise ValueError(f'cannot decode image {path}')
            if size is not None and image.shape != size:
                raise ValueError(f'{path}: size {image.shape[1]}x{image.shape[0]} differs from the first '
                                 f'frame\'s {size[1]}x{size[0]}')
            size = image.shape
            yield Frame(np.ascontiguousarray(image[..., ::-1]), index)


# ----------------------------------------------------------------------------------------------- network
class FrameModel:
    """A network and its ``ModelIO``: frame conversion in and out, and the chunk function for the tiler."""

    def __init__(self, net: nn.Module, io: ModelIO, device: torch.device, dtype: torch.dtype,
                 scale: int | None = None) -> None:
        self.net, self.io, self.device, self.dtype = net, io, device, dtype
        if io.color == 'y_bicubic':
            self.bicubic = scale or 2
        elif scale is not None and scale != io.scale:
            raise ValueError(f'--scale {scale}: this network upscales x{io.scale} (only VDSR-style networks take '
                             '--scale)')
        else:
            self.bicubic = None
        self.scale = io.scale * (self.bicubic or 1)

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 RGB (H, W, 3) → (network input (C, h, w) float on device, what ``finish`` needs besides)."""
        rgb = torch.from_numpy(image).to(self.device).permute(2, 0, 1).float() / 255.0
        if self.io.color == 'rgb':
            return rgb, None
        if self.io.color == 'grey':
            return torch.tensordot(rgb.new_tensor(LUMA), rgb, dims=1)[None], None
        up = F.interpolate(rgb[None], scale_factor=self.bicubic, mode='bicubic', align_corners=False)[0]
        ycbcr = rgb2ycbcr_pt(up[None].clamp(0, 1))[0]
        return ycbcr[:1], ycbcr[1:]

    def finish(self, out: torch.Tensor, extra: torch.Tensor | None) -> np.ndarray:
        """Network output (C', H, W) → uint8 RGB (H, W, 3), rounded."""
        out = out.float()
        if extra is not None:  # VDSR: refined Y with the bicubic Cb/Cr, back to RGB
            ycbcr = torch.cat([out, extra]).permute(1, 2, 0) * 255.0
            out = ((ycbcr @ YCBCR_TO_RGB.to(out)) + YCBCR_TO_RGB_OFFSET.to(out)).permute(2, 0, 1) / 255.0
        if out.shape[0] == 1:
            out = out.expand(3, -1, -1)
        return (out.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = max(0, self.io.min_size - h), max(0, self.io.min_size - w)
        if ph or pw:
            x = F.pad(x.flatten(0, -4), (0, pw, 0, ph), mode='replicate').view(*x.shape[:-2], h + ph, w + pw)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
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


# ----------------------------------------------------------------------------------------------- output
def _temporary_name(target: Path, suffix: str) -> Path:
    """An unused hidden name beside ``target`` (same folder, so the final rename is atomic)."""
    while True:
        path = target.parent / f'.{target.name}.{secrets.token_hex(4)}.partial{suffix}'
        if not path.exists():
            return path


class _Writer:
    """Writes uint8 RGB frames to a temporary path beside ``target``; ``commit`` renames it into place."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.tmp: Path | None = None

    def write(self, image: np.ndarray, pts: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        os.replace(self.tmp, self.target)
        self.tmp = None

    def discard(self) -> None:
        if self.tmp is not None:
            if self.tmp.is_dir():
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                self.tmp.unlink(missing_ok=True)
            self.tmp = None


class FolderWriter(_Writer):
    """PNG frames 00000000.png, 00000001.png, ... (exact)."""

    def __init__(self, target: Path) -> None:
        super().__init__(target)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ValueError(f'output {target} exists and is not an empty folder')
        self.tmp = _temporary_name(target, '')
        self.tmp.mkdir()
        self.count = 0

    def write(self, image: np.ndarray, pts: int) -> None:
        path = self.tmp / f'{self.count:08d}.png'
        if not cv2.imwrite(str(path), image[..., ::-1]):
            raise OSError(f'cannot write {path}')
        self.count += 1

    def close(self) -> None:
        if self.target.is_dir():
            self.target.rmdir()  # empty (checked above): os.replace needs it gone


class VideoWriter(_Writer):
    """H.264 yuv420p with the input's timestamps; the input's first audio stream remuxed alongside."""

    def __init__(self, target: Path, source: FrameSource, crf: int, preset: str, audio: bool) -> None:
        super().__init__(target)
        self.tmp = _temporary_name(target, target.suffix)
        self.source, self.crf, self.preset, self.audio = source, crf, preset, audio and source.audio
        self.container = self.stream = None
        self.audio_in = self.audio_out = self.audio_packets = self.pending_audio = None

    def _open(self, height: int, width: int) -> None:
        """Open the container at the first frame, when the output size is known (video first, then audio)."""
        self.container = av.open(str(self.tmp), mode='w', format=CONTAINER_FORMATS[self.target.suffix.lower()])
        self.stream = self.container.add_stream('libx264', rate=self.source.rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = 'yuv420p'
        self.stream.time_base = self.source.time_base
        self.stream.codec_context.time_base = self.source.time_base
        self.stream.options = {'crf': str(self.crf), 'preset': self.preset}
        if self.audio:
            self.audio_in = av.open(str(self.source.path))
            audio_stream = self.audio_in.streams.audio[0]
            self.audio_out = self.container.add_stream_from_template(audio_stream)
            self.audio_packets = self.audio_in.demux(audio_stream)

    def _mux_audio_until(self, seconds: float | None) -> None:
        """Remux audio packets up to ``seconds`` (all when None), interleaving them with the video."""
        while self.audio_packets is not None:
            packet = self.pending_audio or next(self.audio_packets, None)
            self.pending_audio = None
            if packet is None:
                self.audio_packets = None
                return
            if packet.dts is None:  # the demuxer's flush packet
                continue
            if seconds is not None and packet.pts is not None and packet.pts * packet.time_base > seconds:
                self.pending_audio = packet
                return
            packet.stream = self.audio_out
            self._mux(packet)

    def _mux(self, packet: av.Packet) -> None:
        try:
            self.container.mux(packet)
        except ValueError as err:
            raise ValueError(f'{self.target}: cannot store the stream ({err}); for audio the container cannot '
                             'hold, use .mkv or --no-audio') from None

    def write(self, image: np.ndarray, pts: int) -> None:
        h, w = image.shape[:2]
        if self.container is None:
            self._open(h, w)
        if h % 2 or w % 2:
            image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode='edge')
        frame = av.VideoFrame.from_ndarray(image, format='rgb24')
        frame.pts, frame.time_base = pts, self.source.time_base
        self._mux_audio_until(float(pts * self.source.time_base))
        for packet in self.stream.encode(frame):
            self._mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode(None):
                self._mux(packet)
        self._mux_audio_until(None)
        self._release()

    def _release(self) -> None:
        for container in (self.container, self.audio_in):
            if container is not None:
                container.close()
        self.container = self.audio_in = None

    def discard(self) -> None:
        try:
            self._release()
        except Exception:  # noqa: BLE001  (the file is deleted anyway)
            pass
        super().discard()


def open_writer(output: str | Path, source: FrameSource, crf: int = 18, preset: str = 'medium',
                audio: bool = True) -> _Writer:
    """A writer for ``output``: a video file (by suffix) or a folder of PNG frames (no suffix / a folder)."""
    target = Path(output)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f'cannot create the output folder {parent}: {err}') from None
    if not os.access(parent, os.W_OK):
        raise OSError(f'output folder {parent} is not writable')
    suffix = target.suffix.lower()
    if suffix in CONTAINER_FORMATS:
        if target.is_dir():
            raise ValueError(f'output {target} is a folder; give a file name for a video')
        return VideoWriter(target, source, crf, preset, audio)
    if suffix and not target.is_dir():
        raise ValueError(f'output {target}: unsupported suffix {suffix!r}; use {", ".join(CONTAINER_FORMATS)} '
                         'or a folder (no suffix) for PNG frames')
    return FolderWriter(target)


# ----------------------------------------------------------------------------------------------- pipeline
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


def _writer(writer: _Writer, q: queue.Queue, stop: threading.Event, errors: list) -> None:
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


def upscale_video(model: FrameModel, source: FrameSource, writer: _Writer, batch: int = 4,
                  chunk: int = 16, chunk_overlap: int = 4, tile: int | None = None, tile_overlap: int = 16,
                  window_padding: str = 'reflection', progress: bool = True) -> int:
    """Decode → network → encode in three threads joined by bounded queues; returns the number of frames.

    On success the writer's file is renamed into place; on any exception (KeyboardInterrupt included) the
    temporary output is removed and the exception propagates."""
    stop = threading.Event()
    frames_in: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    frames_out: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_reader, args=(source, frames_in, stop), daemon=True, name='decode'),
               threading.Thread(target=_writer, args=(writer, frames_out, stop, errors), daemon=True,
                                name='encode')]
    pending: deque = deque()  # (pts, extra) of frames given to the network, in order

    def inputs() -> Iterator[torch.Tensor]:
        while True:
            item = frames_in.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            tensor, extra = model.prepare(item.image)
            pending.append((item.pts, extra))
            yield tensor

    io = model.io
    stream = inputs()
    if io.temporal == 'window':
        stream = sliding_windows(stream, io.window, window_padding)
    size, overlap = (chunk, chunk_overlap) if io.temporal == 'clip' else (batch, 0)
    count = 0
    bar = tqdm(total=source.num_frames, unit='frame', disable=not progress, dynamic_ncols=True)
    try:
        for thread in threads:
            thread.start()
        with torch.inference_mode():
            for out in stream_forward(model.chunk_fn(), stream, io.scale, size, overlap, tile, tile_overlap,
                                      io.multiple):
                pts, extra = pending.popleft()
                if not _put(frames_out, (model.finish(out, extra), pts), stop):
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


# ----------------------------------------------------------------------------------------------- CLI
def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {value}')
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='vsrkit-upscale', description=__doc__.splitlines()[0])
    parser.add_argument('input', help='video file or folder of frames')
    parser.add_argument('output', help='video file (.mp4/.mkv/.mov) or folder for PNG frames')
    parser.add_argument('--model', required=True, help='checkpoint (.pth)')
    source_group = parser.add_mutually_exclusive_group()
    source_group.add_argument('--opt', help='options YAML whose network_g builds the model (overrides detection)')
    source_group.add_argument('--arch', help='registered architecture name (overrides detection)')
    parser.add_argument('--scale', type=_positive, help='upscaling factor for VDSR-style networks (default 2)')
    parser.add_argument('--tile', type=_positive, help='LR tile size (default: whole frames)')
    parser.add_argument('--tile-overlap', type=int, default=16, help='tile overlap in LR pixels (default 16)')
    parser.add_argument('--chunk', type=_positive, default=16, help='frames per recurrent chunk (default 16)')
    parser.add_argument('--chunk-overlap', type=int, default=4, help='frames shared by chunks (default 4)')
    parser.add_argument('--batch', type=_positive, default=4, help='frames per call of frame/window networks')
    parser.add_argument('--window-padding', default='reflection',
                        choices=('reflection', 'replicate', 'reflection_circle', 'circle'))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', default='fp32', choices=tuple(DTYPES))
    parser.add_argument('--crf', type=int, default=18, help='x264 quality (0-51, lower is better; default 18)')
    parser.add_argument('--preset', default='medium', help='x264 preset (default medium)')
    parser.add_argument('--fps', type=float, default=25.0, help='frame rate of a folder input (default 25)')
    parser.add_argument('--no-audio', action='store_true', help='do not copy the audio stream')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    writer = None
    try:
        device = torch.device(args.device)
        if device.type == 'cuda' and not torch.cuda.is_available():
            raise ValueError('--device cuda: CUDA is not available')
        dtype = DTYPES[args.dtype]
        if dtype == torch.float16 and device.type != 'cuda':
            raise ValueError('--dtype fp16 needs --device cuda (use bf16 or fp32 on CPU)')
        if not 0 <= args.crf <= 51:
            raise ValueError(f'--crf must be in 0..51, got {args.crf}')
        source = FrameSource(args.input, args.fps)
        net, info = load_model(args.model, args.arch, args.opt, device)
        model = FrameModel(net, info['io'], device, dtype, args.scale)
        writer = open_writer(args.output, source, args.crf, args.preset, audio=not args.no_audio)
        print(f"{info['arch']} ({info['io'].describe()}; from {info['source']}) x{model.scale}: "
              f'{args.input} -> {args.output}', file=sys.stderr)
        count = upscale_video(model, source, writer, args.batch, args.chunk, args.chunk_overlap, args.tile,
                              args.tile_overlap, args.window_padding, progress=not args.quiet)
    except KeyboardInterrupt:
        if writer is not None:
            writer.discard()
        print('interrupted: no output written', file=sys.stderr)
        return 130
    except (FileNotFoundError, KeyError, ValueError, OSError, RuntimeError, av.FFmpegError) as err:
        if writer is not None:
            writer.discard()
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f'error: {message}', file=sys.stderr)
        return 1
    print(f'wrote {count} frames to {args.output}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
