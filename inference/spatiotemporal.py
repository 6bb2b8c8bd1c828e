"""Spatio-temporal fusion at inference: grey frames → twice the frame rate, in colour.

:func:`fuse` runs the pipeline of iSiddharth20/Generative-AI-Based-Spatio-Temporal-Fusion: the interpolator
(``ConvLSTM``) reads the N grey frames and predicts one frame after each (between frame t and t+1; after the last
one it extrapolates), the known and predicted frames are interleaved (x0, p0, x1, p1, …, x_{N-1}, p_{N-1}: 2N
frames, as the original writes them), and the colouriser (``Grey2RGBAutoEncoder``) turns every frame into RGB.
Also here: reading a frame folder or a video, writing a PNG folder atomically, and scoring against real frames.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from torch import nn

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.metrics import calculate_psnr, calculate_ssim
from vsrkit.data.image_decode import IMG_EXTENSIONS
from vsrkit.data.image_store import natural_key


def read_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """uint8 BGR frames of a folder of images (natural order) or of a video file (decoded with PyAV)."""
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMG_EXTENSIONS),
                       key=lambda p: natural_key(p.name))
        if not files:
            raise FileNotFoundError(f'no image frames ({", ".join(IMG_EXTENSIONS)}) in {path}')
        frames = []
        for file in files:
            frame = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if frame is None:
                raise ValueError(f'cannot decode frame {file}')
            frames.append(frame)
        return frames
    if not path.is_file():
        raise FileNotFoundError(f'{path} is neither a folder of frames nor a video file')
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format='bgr24') for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as err:
        raise ValueError(f'cannot decode video {path}: {err}') from None
    if not frames:
        raise ValueError(f'video {path} has no frames')
    return frames


def to_grey_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 BGR (or grey) frames → (N, 1, H, W) float in [0, 1], BT.601 luma (OpenCV's BGR2GRAY)."""
    grey = [f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
    return torch.from_numpy(np.stack(grey)[:, None]).float().div_(255.0)


@torch.no_grad()
def fuse(grey: torch.Tensor, colorizer: nn.Module, interpolator: nn.Module, batch: int = 8) -> torch.Tensor:
    """(N, 1, H, W) grey frames → (2N, 3, H, W) RGB frames in [0, 1] (see module docstring)."""
    if grey.dim() != 4 or grey.shape[1] != 1:
        raise ValueError(f'expected (N, 1, H, W) grey frames, got shape {tuple(grey.shape)}')
    device = next(interpolator.parameters()).device
    predicted = interpolator(grey.unsqueeze(0).to(device))
    predicted = (predicted[0] if isinstance(predicted, tuple) else predicted)[0].clamp(0, 1)
    frames = torch.stack([grey.to(device), predicted], dim=1).flatten(0, 1)  # x0, p0, x1, p1, ...
    device = next(colorizer.parameters()).device
    return torch.cat([colorizer(chunk.to(device)).clamp(0, 1).cpu() for chunk in frames.split(batch)])


def to_images(frames: torch.Tensor) -> list[np.ndarray]:
    """(N, 3, H, W) RGB in [0, 1] → uint8 BGR images."""
    array = (frames.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [np.ascontiguousarray(f[..., ::-1]) for f in array]


def write_frames(images: list[np.ndarray], folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``00000000.png``, … into a temporary sibling folder, then rename it to ``folder``."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f'{folder} exists; pass --overwrite to replace it')
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=folder.parent))
    try:
        for index, image in enumerate(images):
            if not cv2.imwrite(str(tmp / f'{index:08d}.png'), image):
                raise OSError(f'could not write frame {index} to {tmp}')
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def score_frames(images: list[np.ndarray], reference: list[np.ndarray]) -> list[dict[str, float]]:
    """PSNR/SSIM (RGB, no border shave) of each image against the reference frame of the same index; frames
    without a reference (e.g. the final extrapolated one) are not scored."""
    rows = []
    for index, (image, ref) in enumerate(zip(images, reference)):
        if image.shape != ref.shape:
            raise ValueError(f'reference frame {index} is {ref.shape[:2]}, the output {image.shape[:2]}')
        rows.append({'frame': index, 'psnr': float(calculate_psnr(image, ref, crop_border=0)),
                     'ssim': float(calculate_ssim(image, ref, crop_border=0))})
    return rows
