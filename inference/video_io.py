"""Video input and output for upscaling: a PyAV / image-folder frame source and writers that never leave a partial
file under the output's name.

What is kept: the frame count; every frame's timestamp (each output frame is written with its input frame's pts
in the input stream's time base, so variable frame rate survives; a folder gets pts = index in 1/fps); every
audio and subtitle stream, remuxed packet by packet without re-encoding where the output container can hold its
codec (one line names each stream it cannot hold, and why); the display rotation and the colour tags
(matrix, range, primaries, transfer) of the video stream, and the conversion back to YUV uses the input's matrix
and range. Frames are decoded to RGB by FFmpeg's swscale with the stream's own matrix: 8-bit video to RGB24, video
of more bits per sample (10-bit HEVC / H.264 High 10, 12-bit, ...) to RGB48, so its low bits reach the network.

Image folders: PNG/JPEG/... frames in name order; 16-bit PNGs stay 16-bit and an alpha channel is carried beside
the RGB (:class:`Frame`). A folder output writes PNGs that keep both; a video output (H.264 4:2:0: 8 bits, or
10 bits (High 10) for input of more than 8 bits; no alpha) keeps at most 10 bits and no alpha, and the caller says
so in one line where that loses something (``keeps_alpha`` / ``max_bits``).

Safety: the output is written under a temporary name in the output's folder and renamed only when complete;
``discard`` removes it.
"""
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from vsrkit.data.image_decode import IMG_EXTENSIONS

CONTAINER_FORMATS = {'.mp4': 'mp4', '.mkv': 'matroska', '.mov': 'mov'}
COPIED_STREAMS = ('audio', 'subtitle')
Log = Callable[[str], None]


@dataclass
class Frame:
    """A decoded frame: RGB (H, W, 3) uint8 or uint16, its timing, and its alpha (H, W) of the same dtype."""

    image: np.ndarray
    pts: int
    alpha: np.ndarray | None = None


@dataclass(frozen=True)
class VideoLook:
    """How the input's video is to be displayed: rotation (degrees counter-clockwise) and colour tags
    (PyAV's enum values; None when unspecified)."""

    rotation: int = 0
    colorspace: int | None = None
    color_range: int | None = None
    color_primaries: int | None = None
    color_trc: int | None = None


def _rgb_format(dtype: np.dtype | type) -> str:
    """FFmpeg's packed RGB format for frames of ``dtype`` (uint8 or uint16 samples)."""
    return 'rgb48le' if np.dtype(dtype) == np.uint16 else 'rgb24'


def _specified(value: int) -> int | None:
    """A matrix / primaries / transfer tag, or None where FFmpeg says 'unspecified' (2)."""
    return None if int(value) == 2 else int(value)


def _read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB (H, W, 3) and alpha (H, W) or None, at the file's own bit depth (8 or 16)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f'cannot decode image {path}')
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'{path}: {image.dtype} samples; expected 8- or 16-bit images')
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2), None
    alpha = image[..., 3] if image.shape[2] == 4 else None
    return np.ascontiguousarray(image[..., 2::-1]), alpha


class FrameSource:
    """Frames of a video file or an image folder, with the timing of the output stream.

    Attributes: time_base (Fraction), rate (Fraction, nominal fps), num_frames (int or None when unknown),
    height / width, bits (per sample of the input: 8, 10, 12 or 16), dtype (np.uint8 for 8 bits, else np.uint16,
    the samples scaled to the full 16-bit range), has_alpha, look (:class:`VideoLook`), streams (the input's audio
    and subtitle streams, to be copied)."""

    def __init__(self, path: str | Path, fps: float = 25.0) -> None:
        self.path = Path(path)
        self.streams: list = []
        self.look = VideoLook()
        if self.path.is_dir():
            self._open_folder(fps)
            return
        if not self.path.is_file():
            raise FileNotFoundError(f'input {self.path} does not exist')
        self.files: list[Path] = []
        self.has_alpha = False
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise ValueError(f'{self.path}: no video stream')
                stream = container.streams.video[0]
                self.time_base = stream.time_base or Fraction(1, 25)
                self.rate = stream.average_rate or stream.guessed_rate or Fraction(25)
                self.num_frames = stream.frames or None
                self.height, self.width = stream.codec_context.height, stream.codec_context.width
                self.streams = [(s.index, s.type, s.codec_context.name) for s in container.streams
                                if s.type in COPIED_STREAMS]
                first = next(container.decode(stream), None)
                if first is None:
                    raise ValueError(f'{self.path}: no video frames could be decoded')
                # from a decoded frame: a container need not state the pixel format before decoding
                self.bits = max((c.bits for c in first.format.components), default=8)
                self.dtype = np.uint16 if self.bits > 8 else np.uint8
                self.look = VideoLook(int(first.rotation or 0), _specified(first.colorspace),
                                      int(first.color_range) or None, _specified(first.color_primaries),
                                      _specified(first.color_trc))
        except av.FFmpegError as err:
            raise ValueError(f'cannot read video {self.path}: {err}') from None

    def _open_folder(self, fps: float) -> None:
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        if not self.files:
            raise ValueError(f'{self.path}: no frames (no {"/".join(IMG_EXTENSIONS)} files)')
        self.rate = Fraction(fps).limit_denominator(1001)
        self.time_base = 1 / self.rate
        self.num_frames = len(self.files)
        image, alpha = _read_image(self.files[0])
        self.height, self.width = image.shape[:2]
        self.dtype, self.has_alpha = image.dtype.type, alpha is not None
        self.bits = 8 * image.dtype.itemsize

    def frames(self) -> Iterator[Frame]:
        if self.files:
            yield from self._folder_frames()
            return
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = 'AUTO'
                rgb = _rgb_format(self.dtype)
                previous = None
                step = max(1, round(1 / (self.rate * self.time_base))) if self.rate else 1
                for frame in container.decode(stream):
                    pts = frame.pts if frame.pts is not None else (previous + step if previous is not None else 0)
                    # The encoder needs strictly increasing timestamps (a duplicated pts would drop a frame).
                    pts = pts if previous is None or pts > previous else previous + 1
                    previous = pts
                    yield Frame(frame.to_ndarray(format=rgb), pts)
        except av.FFmpegError as err:
            raise ValueError(f'cannot decode video {self.path}: {err}') from None

    def _folder_frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.files):
            image, alpha = _read_image(path)
            if image.shape[:2] != (self.height, self.width):
                raise ValueError(f'{path}: size {image.shape[1]}x{image.shape[0]} differs from the first '
                                 f'frame\'s {self.width}x{self.height}')
            if image.dtype != self.dtype or (alpha is not None) != self.has_alpha:
                raise ValueError(f'{path}: {image.dtype.itemsize * 8}-bit{" with alpha" if alpha is not None else ""}'
                                 f', unlike the first frame ({np.dtype(self.dtype).itemsize * 8}-bit'
                                 f'{" with alpha" if self.has_alpha else ""})')
            yield Frame(image, index, alpha)


# ----------------------------------------------------------------------------------------------- output
def _temporary_name(target: Path, suffix: str) -> Path:
    """An unused hidden name beside ``target`` (same folder, so the final rename is atomic)."""
    while True:
        path = target.parent / f'.{target.name}.{secrets.token_hex(4)}.partial{suffix}'
        if not path.exists():
            return path


class Writer:
    """Writes RGB frames to a temporary path beside ``target``; ``commit`` renames it into place.

    ``keeps_alpha``: whether the output format holds an alpha channel; ``max_bits``: the most bits per sample it
    holds (frames of more than 8 are given as uint16, scaled to the full 16-bit range)."""

    keeps_alpha = False
    max_bits = 8

    def __init__(self, target: Path) -> None:
        self.target = target
        self.tmp: Path | None = None

    def write(self, image: np.ndarray, pts: int, alpha: np.ndarray | None = None) -> None:
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


class FolderWriter(Writer):
    """PNG frames 00000000.png, 00000001.png, ... (exact; 8 or 16 bits, RGB or RGBA as given)."""

    keeps_alpha = True
    max_bits = 16

    def __init__(self, target: Path, overwrite: bool = False) -> None:
        super().__init__(target)
        if target.exists() and not target.is_dir():
            raise ValueError(f'output {target} exists and is not a folder')
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            raise ValueError(f'output {target} exists and is not an empty folder; pass --overwrite to replace it')
        self.tmp = _temporary_name(target, '')
        self.tmp.mkdir()
        self.count = 0

    def write(self, image: np.ndarray, pts: int, alpha: np.ndarray | None = None) -> None:
        path = self.tmp / f'{self.count:08d}.png'
        bgr = image[..., ::-1] if alpha is None else np.dstack([image[..., ::-1], alpha])
        if not cv2.imwrite(str(path), np.ascontiguousarray(bgr)):
            raise OSError(f'cannot write {path}')
        self.count += 1

    def close(self) -> None:
        pass

    def commit(self) -> None:
        # the old folder (empty, or replaced on --overwrite) stays whole until the new one is complete: moved aside,
        # the new one renamed into place, then the old one removed
        aside = _temporary_name(self.target, '.old') if self.target.is_dir() else None
        if aside is not None:
            os.replace(self.target, aside)
        super().commit()
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


class VideoWriter(Writer):
    """H.264 4:2:0 with the input's timestamps, rotation and colour tags; the input's audio and subtitle streams
    remuxed alongside (those the container can hold). 8-bit frames are encoded as yuv420p, uint16 frames as
    yuv420p10le (High 10: the 10 high bits of each sample)."""

    max_bits = 10

    def __init__(self, target: Path, source: FrameSource, crf: int, preset: str, kinds: tuple[str, ...],
                 log: Log) -> None:
        super().__init__(target)
        self.format = CONTAINER_FORMATS[target.suffix.lower()]
        self.source, self.crf, self.preset = source, crf, preset
        self.copied = self._copyable([s for s in source.streams if s[1] in kinds], log)
        self.tmp = _temporary_name(target, target.suffix)
        self.container = self.stream = self.input = None
        self.packets = self.pending = None
        self.outputs: dict[int, av.stream.Stream] = {}

    def _copyable(self, streams: list, log: Log) -> list[int]:
        """Indices of the input streams the output container can hold; one line for each it cannot."""
        with av.open(os.devnull, mode='w', format=self.format) as probe:
            supported = probe.supported_codecs
        held = []
        for index, kind, codec in streams:
            if codec in supported:
                held.append(index)
            else:
                hint = 'use .mkv' if self.format != 'matroska' else 'no container of vsrkit-upscale holds it'
                log(f'not copied: {kind} stream #{index} ({codec}): {self.format} cannot hold {codec}; {hint}')
        return held

    def _open(self, height: int, width: int, deep: bool) -> None:
        """Open the container at the first frame, when the output size and depth (``deep``: uint16 frames) are known
        (video first, then the rest)."""
        self.container = av.open(str(self.tmp), mode='w', format=self.format)
        self.stream = self.container.add_stream('libx264', rate=self.source.rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = 'yuv420p10le' if deep else 'yuv420p'
        self.stream.time_base = self.source.time_base
        context = self.stream.codec_context
        context.time_base = self.source.time_base
        look = self.source.look
        for name in ('colorspace', 'color_range', 'color_primaries', 'color_trc'):
            if getattr(look, name) is not None:
                setattr(context, name, getattr(look, name))
        if look.rotation:
            self.stream.set_display_rotation(look.rotation)
        self.stream.options = {'crf': str(self.crf), 'preset': self.preset}
        if self.copied:
            self.input = av.open(str(self.source.path))
            streams = [self.input.streams[i] for i in self.copied]
            self.outputs = {s.index: self.container.add_stream_from_template(s) for s in streams}
            self.packets = self.input.demux(streams)

    def _mux_until(self, seconds: float | None) -> None:
        """Remux the copied streams' packets up to ``seconds`` (all when None), interleaved with the video."""
        while self.packets is not None:
            packet = self.pending or next(self.packets, None)
            self.pending = None
            if packet is None:
                self.packets = None
                return
            if packet.dts is None and packet.pts is None:  # the demuxer's flush packet
                continue
            time = packet.pts if packet.pts is not None else packet.dts
            if seconds is not None and time * packet.time_base > seconds:
                self.pending = packet
                return
            packet.stream = self.outputs[packet.stream.index]
            self._mux(packet)

    def _mux(self, packet: av.Packet) -> None:
        try:
            self.container.mux(packet)
        except ValueError as err:
            raise ValueError(f'{self.target}: cannot store stream #{packet.stream.index} ({err})') from None

    def write(self, image: np.ndarray, pts: int, alpha: np.ndarray | None = None) -> None:
        h, w = image.shape[:2]
        if self.container is None:
            self._open(h, w, image.dtype == np.uint16)
        if h % 2 or w % 2:
            image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode='edge')
        frame = av.VideoFrame.from_ndarray(image, format=_rgb_format(image.dtype))
        look = self.source.look
        if look.colorspace is not None or look.color_range is not None:  # back to YUV with the input's matrix
            frame = frame.reformat(format=self.stream.pix_fmt, dst_colorspace=look.colorspace,
                                   dst_color_range=look.color_range)
        frame.pts, frame.time_base = pts, self.source.time_base
        self._mux_until(float(pts * self.source.time_base))
        for packet in self.stream.encode(frame):
            self._mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode(None):
                self._mux(packet)
        self._mux_until(None)
        self._release()

    def _release(self) -> None:
        for container in (self.container, self.input):
            if container is not None:
                container.close()
        self.container = self.input = None

    def discard(self) -> None:
        try:
            self._release()
        except Exception:  # noqa: BLE001  (the file is deleted anyway)
            pass
        super().discard()


def open_writer(output: str | Path, source: FrameSource, crf: int = 18, preset: str = 'medium',
                audio: bool = True, subtitles: bool = True, log: Log = print, overwrite: bool = False) -> Writer:
    """A writer for ``output``: a video file (by suffix) or a folder of PNG frames (no suffix / a folder).
    ``audio`` / ``subtitles``: copy those streams of the input; ``overwrite``: replace an existing folder of frames
    (a video file is replaced by the final rename). ``log`` gets the one-line notes (streams the
    container cannot hold)."""
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
        kinds = ('audio',) * audio + ('subtitle',) * subtitles
        return VideoWriter(target, source, crf, preset, kinds, log)
    if suffix and not target.is_dir():
        raise ValueError(f'output {target}: unsupported suffix {suffix!r}; use {", ".join(CONTAINER_FORMATS)} '
                         'or a folder (no suffix) for PNG frames')
    return FolderWriter(target, overwrite)
