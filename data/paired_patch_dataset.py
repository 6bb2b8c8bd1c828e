"""Paired LR/HR images for single-image (or per-frame) SR, from folders or BasicSR-format lmdb.

Options follow basicsr's ``PairedImageDataset`` (dataroot_gt, dataroot_lq, io_backend, filename_tmpl, gt_size,
use_hflip, use_rot, scale), so a BasicSR YAML works after changing ``type:``. Differences that matter:
- ``patches_per_image``: the seed's recipe takes several random patches of each image per epoch;
- images are read through :class:`vsrkit.data.image_store.ImageStore` (any image suffix on disk, or an lmdb;
  8-bit RGB PNGs by the fast libdeflate + libspng path); lmdb environments are opened lazily once per process
  (``vsrkit.data.lmdb_io``), so DataLoader workers and several datasets on one lmdb work with py-lmdb >= 2;
- every pair's sizes are checked against ``scale`` when the dataset is built (lmdb: from meta_info; disk:
  from PNG headers, other formats decoded), not mid-training inside a worker.
Randomness comes from Python's ``random`` (basicsr's crop/augment helpers), which the training loop seeds per
sample (``vsrkit.data.sampling``), so crops do not depend on worker count and resume exactly.
"""
from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
from torch.utils.data import Dataset

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import img2tensor
from vsrkit.data.image_store import open_image_store
from vsrkit.utils.registry import DATASET_REGISTRY, register


@register(DATASET_REGISTRY)
class PairedPatchDataset(Dataset):
    """Paired GT/LQ images; training phase yields aligned random patches, other phases whole images.

    Options (dict, BasicSR style): dataroot_gt, dataroot_lq, io_backend {type: disk|lmdb}, scale, phase,
    gt_size (train), use_hflip, use_rot, filename_tmpl (LQ name from GT name, disk only), patches_per_image
    (train: patches per image per epoch, default 1), filename_ext (disk: only this suffix; default any image),
    decode_threads, name (for messages).
    """

    required_options = ('dataroot_gt', 'dataroot_lq', 'scale')  # read by the options check before any run starts
    required_train_options = ('gt_size',)

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        where = f"datasets.{opt.get('name', opt.get('phase', 'dataset'))}"
        for key in ('dataroot_gt', 'dataroot_lq', 'scale'):
            if opt.get(key) is None:
                raise KeyError(f'{where}.{key}: missing')
        self.scale = int(opt['scale'])
        self.train = opt.get('phase', 'train') == 'train'
        self.gt_size = opt.get('gt_size')
        if self.train and not self.gt_size:
            raise KeyError(f'{where}.gt_size: missing; training crops patches of gt_size x gt_size')
        self.patches_per_image = int(opt.get('patches_per_image', 1)) if self.train else 1
        self.gt = open_image_store(opt, 'dataroot_gt', where, ext=None)
        self.lq = open_image_store(opt, 'dataroot_lq', where, ext=None)
        self.keys = sorted(self.gt.keys())
        if not self.keys:
            raise ValueError(f"{where}.dataroot_gt: no images found in {opt['dataroot_gt']}")
        self.lq_keys = [self._lq_key(key, opt.get('filename_tmpl', '{}')) for key in self.keys]
        self.lq.check_keys(self.lq_keys)
        self._check_sizes(where)

    def _lq_key(self, key: str, template: str) -> str:
        """The LQ image of GT ``key``: on disk, ``filename_tmpl`` applied to its name when that image exists
        (basicsr's ``'{}x4'`` pairs ``0801x4.png`` with ``0801.png``), else the same key."""
        if self.lq.backend == 'disk':
            stem = PurePosixPath(key)
            templated = stem.with_name(template.format(stem.name)).as_posix()
            if templated in self.lq:
                return templated
        return key

    def _check_sizes(self, where: str) -> None:
        for key, lq_key in zip(self.keys, self.lq_keys):
            (gh, gw, _), (lh, lw, _) = self.gt.shape(key), self.lq.shape(lq_key)
            if (lh * self.scale, lw * self.scale) != (gh, gw):
                raise ValueError(f'{where}: LQ {self.lq.where(lq_key)} is {lh}x{lw} and GT {self.gt.where(key)} is '
                                 f'{gh}x{gw}, which disagrees with scale {self.scale}')
            if self.train and min(gh, gw) < self.gt_size:
                raise ValueError(f'{where}.gt_size: {self.gt_size} exceeds GT {self.gt.where(key)} ({gh}x{gw})')

    def __len__(self) -> int:
        return len(self.keys) * self.patches_per_image

    def __getitem__(self, index: int) -> dict:
        key, lq_key = self.keys[index // self.patches_per_image], self.lq_keys[index // self.patches_per_image]
        gt = self.gt.read([key])[0].astype(np.float32) / 255.0
        lq = self.lq.read([lq_key])[0].astype(np.float32) / 255.0
        if self.train:
            gt, lq = paired_random_crop(gt, lq, self.gt_size, self.scale, key)
            gt, lq = augment([gt, lq], self.opt.get('use_hflip', True), self.opt.get('use_rot', False))
        gt_t, lq_t = img2tensor([gt, lq], bgr2rgb=True, float32=True)
        return {'lq': lq_t, 'gt': gt_t, 'lq_path': self.lq.path(lq_key), 'gt_path': self.gt.path(key), 'key': key}

