"""Bundled sample datasets, generated on first use from real images and clips that installed packages ship.

Nothing binary is committed: ``datasets/sample/<kind>`` (git-ignored) is built deterministically when an
options file points into it and it does not exist yet, or by ``python scripts/prepare_sample_data.py``.

``datasets/sample/images`` — scikit-image's CC0 photographs, for single-image / per-frame SR::

    train/HR/<photo>.png                 whole photos (cropped to a multiple of 4)
    train/LR_bicubic/X2|X4/<photo>.png   MATLAB-compatible bicubic downscaling (basicsr's imresize)
    val/HR|LR_bicubic/X2|X4/<photo>_<n>.png   crops of photos held out of training
    train/HR.lmdb, train/LR_bicubic_X2.lmdb, ...   the same images as BasicSR-format lmdb (+ meta_info.txt)

``datasets/sample/video`` — see ``vsrkit.data.sample_videos``.

Builders write into a temporary sibling folder and rename it into place when complete, so an interrupted
build never looks finished and two processes racing (torchrun ranks) both end up with one complete copy.
"""
from __future__ import annotations

import difflib
import functools
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable

import cv2
import numpy as np

import skimage.data

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.utils.matlab_functions import imresize
from vsrkit.data.lmdb_io import META_INFO_NAME, make_lmdb_from_folder
from vsrkit.data.sample_videos import build_video_sample, video_sample_files

SCALES = (2, 4)
# (photo, held out for validation?) — photos of skimage.data that are colour, natural and bundled in the wheel.
TRAIN_PHOTOS = ('astronaut', 'hubble_deep_field', 'immunohistochemistry', 'motorcycle_left', 'rocket')
VAL_PHOTOS = ('chelsea', 'coffee')
VAL_CROP = 160
VAL_CROPS_PER_PHOTO = 2


def _photo(name: str) -> np.ndarray:
    """An RGB uint8 photo from scikit-image's bundled data (no download)."""
    if name == 'motorcycle_left':
        image = skimage.data.stereo_motorcycle()[0]
    else:
        image = getattr(skimage.data, name)()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'skimage.data.{name} is not an RGB photo (shape {image.shape})')
    return image


def _save_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f'could not write {path}')


def _downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    lr = imresize(hr.astype(np.float64) / 255.0, 1.0 / scale)
    return np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8)


def _write_pair_set(folder: Path, images: dict[str, np.ndarray]) -> None:
    for name, hr in images.items():
        _save_png(folder / 'HR' / f'{name}.png', hr)
        for scale in SCALES:
            _save_png(folder / 'LR_bicubic' / f'X{scale}' / f'{name}.png', _downscale(hr, scale))


def _val_crop_names(name: str) -> list[str]:
    return [f'{name}_{i}' for i in range(VAL_CROPS_PER_PHOTO)]


def _val_crops(photo: np.ndarray, name: str) -> dict[str, np.ndarray]:
    h, w = photo.shape[:2]
    ys = np.linspace(0, h - VAL_CROP, VAL_CROPS_PER_PHOTO + 2).astype(int)[1:-1]
    xs = np.linspace(0, w - VAL_CROP, VAL_CROPS_PER_PHOTO + 2).astype(int)[1:-1]
    return {crop: photo[y:y + VAL_CROP, x:x + VAL_CROP] for crop, y, x in zip(_val_crop_names(name), ys, xs)}


def image_sample_files() -> list[str]:
    """Every file :func:`build_image_sample` writes, as POSIX paths relative to its root (a test compares it with
    a built tree)."""
    files = []
    for split, names in (('train', TRAIN_PHOTOS), ('val', [c for p in VAL_PHOTOS for c in _val_crop_names(p)])):
        folders = ['HR'] + [f'LR_bicubic/X{scale}' for scale in SCALES]
        lmdbs = ['HR.lmdb'] + [f'LR_bicubic_X{scale}.lmdb' for scale in SCALES]
        files += [f'{split}/{folder}/{name}.png' for folder in folders for name in names]
        files += [f'{split}/{lmdb}/{file}' for lmdb in lmdbs for file in ('data.mdb', 'lock.mdb', META_INFO_NAME)]
    return files


def build_image_sample(target: Path) -> None:
    """Create ``datasets/sample/images`` (layout in the module docstring) at ``target``."""
    def build(tmp: Path) -> None:
        multiple = max(SCALES)
        train = {}
        for name in TRAIN_PHOTOS:
            photo = _photo(name)
            h, w = (s - s % multiple for s in photo.shape[:2])
            train[name] = photo[:h, :w]
        val = {}
        for name in VAL_PHOTOS:
            val.update(_val_crops(_photo(name), name))
        for split, images in (('train', train), ('val', val)):
            _write_pair_set(tmp / split, images)
            make_lmdb_from_folder(tmp / split / 'HR', tmp / split / 'HR.lmdb')
            for scale in SCALES:
                make_lmdb_from_folder(tmp / split / 'LR_bicubic' / f'X{scale}',
                                      tmp / split / f'LR_bicubic_X{scale}.lmdb')

    build_atomically(target, build)


def build_atomically(target: Path, build: Callable[[Path], None]) -> None:
    """Run ``build`` into a temporary sibling of ``target`` and rename it into place when it succeeds."""
    target = Path(target)
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{target.name}.building-', dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():  # a concurrent builder finished first otherwise
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# each builder writes atomically (a temporary folder renamed into place)
SAMPLE_BUILDERS: dict[str, Callable[[Path], None]] = {'images': build_image_sample, 'video': build_video_sample}
# what each builder writes (files; the folders holding them are made too)
SAMPLE_FILES: dict[str, Callable[[], list[str]]] = {'images': image_sample_files, 'video': video_sample_files}


@functools.cache
def sample_layout(kind: str) -> frozenset[str]:
    """Every path (file or folder, relative POSIX) the builder of ``kind`` makes."""
    paths = set()
    for file in SAMPLE_FILES[kind]():
        path = PurePosixPath(file)
        paths.add(file)
        paths.update(str(parent) for parent in path.parents if str(parent) != '.')
    return frozenset(paths)


def _sample_location(path: str | Path) -> tuple[str, Path, str] | None:
    """(kind, sample folder, path relative to it) when ``path`` lies inside ``.../datasets/sample/<kind>``."""
    parts = Path(path).parts
    for i in range(len(parts) - 2):
        if parts[i] == 'datasets' and parts[i + 1] == 'sample' and parts[i + 2] in SAMPLE_BUILDERS:
            return parts[i + 2], Path(*parts[:i + 3]), '/'.join(parts[i + 3:])
    return None


def sample_builder_for(path: str | Path) -> tuple[Callable[[Path], None], Path] | None:
    """(builder, sample folder) when the builder of ``.../datasets/sample/<kind>`` makes ``path`` (the folder itself
    or anything in :func:`sample_layout`); None for any other path, a typo inside a sample folder included."""
    found = _sample_location(path)
    if found is None:
        return None
    kind, folder, relative = found
    return (SAMPLE_BUILDERS[kind], folder) if not relative or relative in sample_layout(kind) else None


def sample_path_hint(path: str | Path) -> str:
    """For a ``path`` inside a sample folder that its builder does not make: what it does make that is closest."""
    found = _sample_location(path)
    if found is None:
        return ''
    kind, folder, relative = found
    depth = relative.count('/')
    candidates = sorted(p for p in sample_layout(kind) if p.count('/') == depth)
    close = difflib.get_close_matches(relative, candidates, n=1, cutoff=0.6)
    made = f"; did you mean {folder / close[0]}?" if close else f" (it makes e.g. {', '.join(candidates[:4])})"
    return f'the sample builder of {folder} does not make {relative}{made}'


def ensure_sample_data(opt: dict) -> list[Path]:
    """Build every sample dataset the options point into that does not exist yet; returns those built."""
    built = []
    for dataset in (opt.get('datasets') or {}).values():
        for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file'):
            path = dataset.get(key) if isinstance(dataset, dict) else None
            found = sample_builder_for(path) if path and not Path(path).exists() else None
            if found and not found[1].exists():
                found[0](found[1])
                built.append(found[1])
    return built
