#!/usr/bin/env python
"""Make a MATLAB-compatible bicubic low-resolution copy of an image folder (e.g. REDS's missing X2 set).

Usage: python scripts/make_bicubic_lr.py GT_DIR LR_DIR --scale 2 [--overwrite]

Every image under GT_DIR (recursively, keeping the sub-folders: REDS's ``000/00000000.png``) is downscaled by
1/scale with BasicSR's MATLAB-compatible ``imresize`` (the kernel REDS's own X4 set was made with), rounded to
uint8 and written as PNG under LR_DIR with the same relative path. Sizes must be multiples of ``scale``.
The folder is built under a temporary name and renamed into place when complete; an existing LR_DIR is refused
without --overwrite. Pack the result into an lmdb with the same keys as the GT lmdb:
``python scripts/create_lmdb.py --dataset folder --input LR_DIR --output NAME.lmdb``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from vsrkit.data.lmdb_io import scan_images
from vsrkit.utils.color import bicubic_downscale


def make_lr_folder(gt_dir: Path, lr_dir: Path, scale: int, overwrite: bool = False) -> int:
    """Write the bicubic x1/scale copy of ``gt_dir`` to ``lr_dir`` (see module docstring); returns the image count."""
    if not gt_dir.is_dir():
        raise FileNotFoundError(f'GT folder {gt_dir} does not exist')
    if lr_dir.exists() and not overwrite:
        raise FileExistsError(f'{lr_dir} exists; pass --overwrite to replace it')
    items = scan_images(gt_dir)
    if not items:
        raise FileNotFoundError(f'no images found under {gt_dir}')
    tmp = lr_dir.with_name(f'.{lr_dir.name}.incomplete')
    shutil.rmtree(tmp, ignore_errors=True)
    for key, path in tqdm(items, desc=f'x1/{scale} bicubic', unit='img'):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f'cannot decode image {path}')
        h, w = image.shape[:2]
        if h % scale or w % scale:
            raise ValueError(f'{path} is {h}x{w}, not a multiple of scale {scale}')
        target = tmp / f'{key}.png'
        target.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target), bicubic_downscale(image, scale)):
            raise OSError(f'could not write {target}')
    lr_dir.parent.mkdir(parents=True, exist_ok=True)
    if lr_dir.exists():  # --overwrite: the old folder is moved aside, not deleted, until the new one is in place
        replaced = lr_dir.with_name(f'.{lr_dir.name}.replaced')
        shutil.rmtree(replaced, ignore_errors=True)
        lr_dir.rename(replaced)
        tmp.rename(lr_dir)
        shutil.rmtree(replaced)
    else:
        tmp.rename(lr_dir)
    return len(items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('gt_dir', type=Path, help='folder of GT images (searched recursively)')
    parser.add_argument('lr_dir', type=Path, help='output folder (same relative paths, .png)')
    parser.add_argument('--scale', type=int, required=True, help='downscaling factor')
    parser.add_argument('--overwrite', action='store_true', help='replace LR_DIR if it exists')
    args = parser.parse_args(argv)
    try:
        count = make_lr_folder(args.gt_dir, args.lr_dir, args.scale, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'wrote {count} images to {args.lr_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
