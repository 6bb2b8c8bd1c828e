"""Paired LR/HR images for single-image (or per-frame) SR, from folders or BasicSR-format lmdb.

Options follow basicsr's ``PairedImageDataset`` (dataroot_gt, dataroot_lq, io_backend, filename_tmpl, gt_size,
use_hflip, use_rot, scale), so a BasicSR YAML works after changing ``type:``. Differences that matter:
- ``patches_per_image``: the seed's recipe takes several random patches of each image per epoch;
- lmdb environments are opened lazily once per process (``vsrkit.data.lmdb_io``), so DataLoader workers and
  several datasets on one lmdb work with py-lmdb >= 2;
- every pair's sizes are checked against ``scale`` when the dataset is built (lmdb: from meta_info; disk:
  from the image headers), not mid-training inside a worker.
Randomness comes from Python's ``random`` (basicsr's crop/augment helpers), which the training loop seeds per
sample (``vsrkit.data.sampling``), so crops do not depend on worker count and resume exactly.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import img2tensor
from vsrkit.data.lmdb_io import LmdbImageReader, read_meta_info
from vsrkit.utils.registry import DATASET_REGISTRY, register

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


class _DiskImages:
    """Reads images by key (relative path without extension) from a folder; picklable."""

    def __init__(self, root: Path, template: str = '{}') -> None:
        self.root, self.template = root, template
        self.paths = {}
        for path in sorted(root.rglob('*')):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                self.paths[str(path.relative_to(root).with_suffix(''))] = path

    def path(self, key: str) -> Path:
        stem = Path(key)
        name = self.template.format(stem.name)
        for candidate in (self.paths.get(str(stem.with_name(name))), self.paths.get(key)):
            if candidate is not None:
                return candidate
        raise KeyError(f"image '{name}' (key '{key}') not found in {self.root}")

    def size(self, key: str) -> tuple[int, int]:
        with Image.open(self.path(key)) as image:
            return image.height, image.width

    def get_image(self, key: str) -> np.ndarray:
        path = self.path(key)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f'cannot decode image {path}')
        return image


class _LmdbImages:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.reader = LmdbImageReader(root)
        self.shapes = {entry.key: entry.shape for entry in read_meta_info(root)}
        self.paths = self.shapes  # keys

    def path(self, key: str) -> str:
        return f'{self.root}:{key}'

    def size(self, key: str) -> tuple[int, int]:
        if key not in self.shapes:
            raise KeyError(f"key '{key}' is not listed in {self.root}/meta_info.txt")
        return self.shapes[key][:2]

    def get_image(self, key: str) -> np.ndarray:
        return self.reader.get_image(key)


def _open_images(root: str, io_backend: dict, template: str, where: str):
    backend = (io_backend or {}).get('type', 'disk')
    if backend == 'lmdb':
        return _LmdbImages(Path(root))
    if backend == 'disk':
        return _DiskImages(Path(root), template)
    raise ValueError(f"{where}.io_backend.type: expected 'disk' or 'lmdb', got {backend!r}")


@register(DATASET_REGISTRY)
class PairedPatchDataset(Dataset):
    """Paired GT/LQ images; training phase yields aligned random patches, other phases whole images.

    Options (dict, BasicSR style): dataroot_gt, dataroot_lq, io_backend {type: disk|lmdb}, scale, phase,
    gt_size (train), use_hflip, use_rot, filename_tmpl (LQ name from GT name, disk only), patches_per_image
    (train: patches per image per epoch, default 1), name (for messages).
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
        self.gt = _open_images(opt['dataroot_gt'], opt.get('io_backend'), '{}', where)
        self.lq = _open_images(opt['dataroot_lq'], opt.get('io_backend'), opt.get('filename_tmpl', '{}'), where)
        self.keys = sorted(self.gt.paths)
        if not self.keys:
            raise ValueError(f"{where}.dataroot_gt: no images found in {opt['dataroot_gt']}")
        self._check_sizes(where)

    def _check_sizes(self, where: str) -> None:
        for key in self.keys:
            (gh, gw), (lh, lw) = self.gt.size(key), self.lq.size(key)
            if (lh * self.scale, lw * self.scale) != (gh, gw):
                raise ValueError(f'{where}: LQ {self.lq.path(key)} is {lh}x{lw} and GT {self.gt.path(key)} is {gh}x{gw}, '
                                 f'which disagrees with scale {self.scale}')
            if self.train and min(gh, gw) < self.gt_size:
                raise ValueError(f'{where}.gt_size: {self.gt_size} exceeds GT {self.gt.path(key)} ({gh}x{gw})')

    def __len__(self) -> int:
        return len(self.keys) * self.patches_per_image

    def __getitem__(self, index: int) -> dict:
        key = self.keys[index // self.patches_per_image]
        gt = self.gt.get_image(key).astype(np.float32) / 255.0
        lq = self.lq.get_image(key).astype(np.float32) / 255.0
        if self.train:
            gt, lq = paired_random_crop(gt, lq, self.gt_size, self.scale, key)
            gt, lq = augment([gt, lq], self.opt.get('use_hflip', True), self.opt.get('use_rot', False))
        gt_t, lq_t = img2tensor([gt, lq], bgr2rgb=True, float32=True)
        return {'lq': lq_t, 'gt': gt_t, 'lq_path': str(self.lq.path(key)), 'gt_path': str(self.gt.path(key)),
                'key': key}

