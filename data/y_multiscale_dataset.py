"""VDSR's training data: Y-channel patches of HR images and their bicubic-degraded copies, several scales in one set.

The original (twtygqyy/pytorch-vdsr) trains on an h5 file made by MATLAB: for every HR image and scale s in
{2, 3, 4}, ``data`` = imresize(imresize(Y, 1/s), s) (bicubic, double precision) and ``label`` = Y, cut into 41x41
patches. Here the same pairs are made on the fly from a folder (or BasicSR lmdb) of HR images, so any image set
trains without a preparation step:

- Y is the BT.601 luma of the uint8 image, rounded to an integer level as MATLAB's ``rgb2ycbcr`` on uint8 does,
  scaled to [0, 1];
- training: the scale is drawn per sample from ``scales``; a region around the patch, aligned to the scale's
  pixel grid and with a margin of 5·s pixels on every side, is degraded with basicsr's MATLAB-compatible
  ``imresize`` (down by s, up by s) and the ``gt_size`` patch is cut from its centre at a random sub-grid
  offset. The margin exceeds the reach of the two bicubic kernels (2·s + 2·s HR pixels), so the patch equals the
  same patch of the whole image degraded at once — exactly what the original's MATLAB script computes — at a
  fraction of the cost; then optional flips/rotations (basicsr ``augment``) apply to both;
- validation / test (``phase`` other than train): whole images, cropped to a multiple of the scale, at the one
  scale ``scales`` must then hold.

Options: dataroot_gt (folder, searched recursively, or lmdb folder), io_backend ({type: disk|lmdb}), filename_ext
(disk: only this suffix; default any image), decode_threads, scales (default [2, 3, 4]), gt_size (training patch
size, default 41), patches_per_image (training, default 1), use_hflip / use_rot (default True / False, the
original used none), phase, name. A top-level ``scale`` (which
BasicSR copies into every dataset) is ignored: VDSR's network sees already upscaled inputs, its options use
``scale: 1``.

Items: ``{'lq': (1, H, W), 'gt': (1, H, W), 'scale': s, 'origin': (top, left) of gt in the scale-cropped image,
'key': name, 'lq_path': source}``, float32 in [0, 1].
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.data.transforms import augment
from basicsr.utils.color_util import bgr2ycbcr
from basicsr.utils.matlab_functions import imresize
from vsrkit.data.image_store import open_image_store
from vsrkit.utils.color import mod_crop
from vsrkit.utils.registry import DATASET_REGISTRY, register

MARGIN_PER_SCALE = 5  # region margin in units of s; the two bicubic kernels reach 4·s HR pixels


def y_channel(image: np.ndarray) -> np.ndarray:
    """uint8 BGR image → its BT.601 Y channel (16-235 range) rounded to integer levels, as float64 in [0, 1]."""
    y = bgr2ycbcr(image.astype(np.float32) / 255.0, y_only=True)
    return np.round(y.astype(np.float64) * 255.0) / 255.0


def degrade(y: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-bicubic down by ``scale`` then up by ``scale`` (size must be a multiple of ``scale``), float64."""
    return imresize(imresize(y, 1.0 / scale), scale)


@register(DATASET_REGISTRY)
class YMultiScaleDataset(Dataset):
    """Bicubic-degraded / HR Y-channel pairs at several scales from HR images (see module docstring)."""

    required_options = ('dataroot_gt',)  # read by the options check before any run starts

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        where = f"datasets.{opt.get('name', opt.get('phase', 'dataset'))}"
        if not opt.get('dataroot_gt'):
            raise KeyError(f'{where}.dataroot_gt: missing; expected a folder (or lmdb) of HR images')
        self.scales = [int(s) for s in opt.get('scales', [2, 3, 4])]
        if not self.scales or min(self.scales) < 1:
            raise ValueError(f'{where}.scales: expected a list of positive integers, got {opt.get("scales")}')
        self.train = opt.get('phase', 'train') == 'train'
        if not self.train and len(self.scales) != 1:
            raise ValueError(f'{where}.scales: validation scores one scale, got {self.scales}')
        self.gt_size = int(opt.get('gt_size', 41))
        self.patches_per_image = int(opt.get('patches_per_image', 1)) if self.train else 1
        self.store = open_image_store(opt, 'dataroot_gt', where, ext=None)
        self.keys = sorted(self.store.keys())
        if not self.keys:
            raise FileNotFoundError(f"{where}.dataroot_gt: no images in {opt['dataroot_gt']}")

    def __len__(self) -> int:
        return len(self.keys) * self.patches_per_image

    def region_size(self, scale: int) -> int:
        """Side of the degraded region around a patch: patch + sub-grid offset + margins, a multiple of ``scale``."""
        need = self.gt_size + (scale - 1) + 2 * MARGIN_PER_SCALE * scale
        return -(-need // scale) * scale

    def __getitem__(self, index: int) -> dict:
        key = self.keys[index // self.patches_per_image]
        scale = random.choice(self.scales) if self.train else self.scales[0]
        y = mod_crop(y_channel(self.store.read([key])[0]), scale)
        if not self.train:
            gt, lq, origin = y, degrade(y, scale), (0, 0)
        else:
            size = self.region_size(scale)
            h, w = y.shape
            if min(h, w) < size:
                raise ValueError(f'{self.store.where(key)} is {h}x{w}: too small for {self.gt_size}x{self.gt_size} '
                                 f'patches at scale {scale} (needs {size}x{size} with the bicubic margins)')
            top = scale * random.randrange((h - size) // scale + 1)
            left = scale * random.randrange((w - size) // scale + 1)
            dy, dx = (MARGIN_PER_SCALE * scale + random.randrange(scale) for _ in range(2))
            region = y[top:top + size, left:left + size]
            crop = (slice(dy, dy + self.gt_size), slice(dx, dx + self.gt_size))
            gt, lq = region[crop], degrade(region, scale)[crop]
            gt, lq = augment([gt[..., None], lq[..., None]], self.opt.get('use_hflip', True),
                             self.opt.get('use_rot', False))
            gt, lq, origin = gt[..., 0], lq[..., 0], (top + dy, left + dx)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(0)

        return {'lq': tensor(lq), 'gt': tensor(gt), 'scale': scale, 'origin': origin, 'key': key,
                'lq_path': self.store.path(key)}
