"""Grey → RGB frame pairs for training the spatio-temporal fusion colouriser (``Grey2RGBAutoEncoder``), per frame.

The original pairs a folder of grey frames with a folder of RGB frames by file name. Here ``dataroot_gt`` holds the
RGB frames (a folder of frames, or of clip sub-folders such as REDS's ``000/00000000.png``, or a BasicSR lmdb);
the grey input is read from ``dataroot_lq`` under the same key when given, else made from the RGB frame with
ITU-R BT.601 luma weights (OpenCV's ``COLOR_BGR2GRAY``; PIL's ``convert('L')`` uses the same weights), rounded to uint8
like a stored grey frame.

Options: dataroot_gt, dataroot_lq (optional), io_backend ({type: disk|lmdb}), filename_ext (disk, default png),
decode_threads, clips (optional list of clip sub-folders; default all), gt_size (training crop; None = whole frames), use_hflip,
use_rot (training), phase, name. Items: ``{'lq': (1, H, W), 'gt': (3, H, W), 'key'}``, float in [0, 1].
"""
from __future__ import annotations

import random

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from vsrkit.data.image_store import open_image_store
from vsrkit.utils.registry import DATASET_REGISTRY, register


def to_grey(frame: np.ndarray) -> np.ndarray:
    """uint8 BGR (H, W, 3) → uint8 grey (H, W) with BT.601 luma weights; grey input passes through."""
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def random_crop(frames: list[np.ndarray], size: int | None, where: str) -> list[np.ndarray]:
    """The same random ``size`` x ``size`` window of every frame (all frames whole when ``size`` is None)."""
    if size is None:
        return frames
    h, w = frames[0].shape[:2]
    if min(h, w) < size:
        raise ValueError(f'{where}.gt_size: {size} exceeds the frame size {h}x{w}')
    top, left = random.randrange(h - size + 1), random.randrange(w - size + 1)
    return [f[top:top + size, left:left + size] for f in frames]


def augment_frames(frames: list[np.ndarray], hflip: bool, rotation: bool) -> list[np.ndarray]:
    """One random horizontal flip / vertical flip / transpose (as basicsr's ``augment`` draws them) applied to
    every frame alike; works on grey (H, W) frames too, which basicsr's ``augment`` cannot transpose."""
    flip_h = hflip and random.random() < 0.5
    flip_v = rotation and random.random() < 0.5
    transpose = rotation and random.random() < 0.5
    out = []
    for frame in frames:
        frame = frame[:, ::-1] if flip_h else frame
        frame = frame[::-1] if flip_v else frame
        out.append(frame.swapaxes(0, 1) if transpose else frame)
    return out


def frames_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 grey (H, W) or BGR (H, W, 3) frames → float (T, C, H, W) in [0, 1], RGB order."""
    stacked = np.stack([f[..., None] if f.ndim == 2 else f[..., ::-1] for f in frames])
    return torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))).float().div_(255.0)


@register(DATASET_REGISTRY)
class GreyRGBFrameDataset(Dataset):
    """(grey frame, RGB frame) pairs from frame folders (see module docstring)."""

    required_options = ('dataroot_gt',)  # read by the options check before any run starts

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        self.where = f"datasets.{opt.get('name', opt.get('phase', 'dataset'))}"
        self.train = opt.get('phase', 'train') == 'train'
        self.gt_size = opt.get('gt_size') if self.train else None
        self.rgb = open_image_store(opt, 'dataroot_gt', self.where)
        self.grey = open_image_store(opt, 'dataroot_lq', self.where) if opt.get('dataroot_lq') else None
        clips = self.rgb.list_clips(opt.get('clips'))
        self.keys = [key for keys in clips.values() for key in keys]
        if self.grey is not None:
            self.grey.check_keys(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict:
        key = self.keys[index]
        rgb = self.rgb.read([key])[0]
        grey = to_grey(self.grey.read([key])[0] if self.grey is not None else rgb)
        if self.train:
            grey, rgb = random_crop([grey, rgb], self.gt_size, self.where)
            grey, rgb = augment_frames([grey, rgb], self.opt.get('use_hflip', True), self.opt.get('use_rot', False))
        return {'lq': frames_tensor([grey])[0], 'gt': frames_tensor([rgb])[0], 'key': key}
