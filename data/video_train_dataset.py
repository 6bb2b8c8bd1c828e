"""Training datasets for REDS and Vimeo-90K: sliding-window (EDVR-style) and clip (recurrent) sampling.

They read the same options as BasicSR's ``REDSDataset`` / ``REDSRecurrentDataset`` / ``Vimeo90KDataset`` /
``Vimeo90KRecurrentDataset``, so a BasicSR YAML works after changing ``type:``:

    dataroot_gt, dataroot_lq (str)    data roots: lmdb folders or frame folders
    meta_info_file (str)              BasicSR clip list ``000 100 (720,1280,3)``; optional: without it every clip
                                      stored under dataroot_gt is used
    io_backend ({type: lmdb|disk})    disk reads ``<root>/<key>.<filename_ext>``
    num_frame (int)                   frames per sample (window: odd; Vimeo clip: default all 7)
    gt_size (int | None)              GT crop size (None: whole frames)
    interval_list (list[int])         temporal strides to draw from (default [1])
    random_reverse (bool)             reverse the frame order with probability 0.5 (default False)
    use_hflip, use_rot (bool)         basicsr's ``augment`` (default True)
    scale (int)                       LR -> GT factor (BasicSR fills it in from the top-level ``scale``; default 4)
    filename_tmpl (str)               REDS frame names, ``format(i, filename_tmpl)`` (default '08d')
    filename_ext (str)                disk backend extension (default 'png')
    val_partition (REDS)              'REDS4' (000, 011, 015, 020), 'official' (240-269) or a list of clip names
    test_mode (REDS, bool)            keep only the val_partition clips instead of excluding them
    flip_sequence (clip datasets)     append the reversed clip: T frames -> 2T (Vimeo-90K recurrent training)
    decode_threads (int | None)       threads decoding one sample's frames (default: the cores, divided among
                                      the DataLoader's workers)

Differences from BasicSR, deliberately: clip lengths come from meta_info (BasicSR's REDS datasets assume 100
frames per clip), everything is checked when the dataset is built (missing keys, meta_info vs lmdb, clips too
short, LR/GT sizes vs scale), lmdbs are opened lazily once per process (BasicSR's LmdbBackend breaks in forked
workers with py-lmdb >= 2), ``random_reverse`` does not mutate shared state (BasicSR's Vimeo datasets reverse
``self.neighbor_list`` in place), the crop window is drawn before decoding so PNG frames decode only down to its
bottom row, frames are cropped as uint8 before the float conversion, and a sample's frames are decoded
concurrently (libdeflate + libspng, :mod:`vsrkit.data.image_decode`).

Items: ``{'lq': (T, C, H/scale, W/scale), 'gt': ..., 'key': str}``, float RGB in [0, 1]; ``gt`` is the centre
frame (C, H, W) for window datasets (what BasicSR's EDVR-style models expect) and (T, C, H, W) for clip datasets.
"""
from __future__ import annotations

import random

import torch
from torch.utils import data

from basicsr.data.transforms import augment

from vsrkit.data.image_store import open_image_store
from vsrkit.data.video_clips import Clip, check_scale, frames_to_tensor, read_clip_meta_info
from vsrkit.utils.registry import DATASET_REGISTRY, register

__all__ = ['VideoTrainDataset', 'REDSWindowDataset', 'REDSClipDataset', 'Vimeo90KWindowDataset',
           'Vimeo90KClipDataset']

REDS_VAL_PARTITIONS = {'REDS4': ('000', '011', '015', '020'), 'official': tuple(f'{i:03d}' for i in range(240, 270))}


class VideoTrainDataset(data.Dataset):
    """Samples windows or clips of ``num_frame`` frames with LR/GT crops and augmentation.

    Subclasses choose the frame naming (:meth:`frame_key`), which clips train (:meth:`select_clips`), whether
    every frame (REDS) or every clip (Vimeo-90K) is one sample (``sample_every_frame``) and the sampling mode
    (``clip_mode``: True = consecutive frames with GT for each, False = a window around one GT frame).
    """

    clip_mode: bool
    sample_every_frame: bool
    required_options: tuple[str, ...] = ('dataroot_gt', 'dataroot_lq')  # read by the options check before any run

    def __init__(self, opt: dict):
        super().__init__()
        owner = type(self).__name__
        self.opt = opt
        self.scale = int(opt.get('scale') or 4)
        self.gt_size = opt.get('gt_size')
        self.interval_list = list(opt.get('interval_list') or [1])
        self.random_reverse = bool(opt.get('random_reverse', False))
        self.use_hflip, self.use_rot = bool(opt.get('use_hflip', True)), bool(opt.get('use_rot', True))
        self.flip_sequence = bool(opt.get('flip_sequence', False))
        if self.flip_sequence and not self.clip_mode:
            raise ValueError(f'{owner}: flip_sequence needs a clip dataset (GT for every frame).')
        if any(not isinstance(i, int) or i < 1 for i in self.interval_list):
            raise ValueError(f'{owner}: interval_list must hold positive integers, got {self.interval_list}.')

        self.gt_store = open_image_store(opt, 'dataroot_gt', owner)
        self.lq_store = open_image_store(opt, 'dataroot_lq', owner)
        self.clips = self.select_clips(self._read_clips(owner))
        if not self.clips:
            raise ValueError(f'{owner}: no training clips left (meta_info_file {opt.get("meta_info_file")}, '
                             f'val_partition {opt.get("val_partition")}).')
        self.num_frame = int(opt.get('num_frame') or self.default_num_frame())
        if not self.clip_mode and self.num_frame % 2 == 0:
            raise ValueError(f'{owner}: num_frame must be odd for a window around one GT frame, got {self.num_frame}.')
        span = (self.num_frame - 1) * max(self.interval_list) + 1
        for clip in self.clips:
            if len(clip.keys) < span:
                raise ValueError(f'{owner}: clip {clip.name!r} has {len(clip.keys)} frames, fewer than the {span} '
                                 f'that num_frame={self.num_frame} with interval {max(self.interval_list)} needs.')
        for clip in self.clips:
            self.gt_store.check_keys(clip.keys)
            self.lq_store.check_keys(clip.keys)
        check_scale(self.gt_store, self.lq_store, self.clips, self.scale)
        self.lq_sizes = [self.lq_store.shape(clip.keys[0])[:2] for clip in self.clips]
        if self.gt_size is not None:
            patch = self.gt_size // self.scale
            for clip, (h, w) in zip(self.clips, self.lq_sizes):
                if min(h, w) < patch:
                    raise ValueError(f'{owner}: gt_size {self.gt_size} needs LQ frames of at least {patch}x{patch} '
                                     f'(scale {self.scale}), but clip {clip.name!r} in {self.lq_store.root} '
                                     f'is {h}x{w}.')
        self.samples = [(c, f) for c, clip in enumerate(self.clips)
                        for f in (range(len(clip.keys)) if self.sample_every_frame else [self._middle(len(clip.keys))])]

    # ------------------------------------------------------------------------------------------- hooks
    def frame_key(self, clip: str, index: int) -> str:
        raise NotImplementedError

    def select_clips(self, clips: list[Clip]) -> list[Clip]:
        return clips

    def default_num_frame(self) -> int:
        raise KeyError(f"{type(self).__name__} needs the option 'num_frame'.")

    # ------------------------------------------------------------------------------------------- internals
    def _read_clips(self, owner: str) -> list[Clip]:
        meta_file = self.opt.get('meta_info_file')
        if meta_file is None:  # every clip stored under dataroot_gt
            return [Clip(name, keys) for name, keys in self.gt_store.list_clips().items()]
        clips = []
        listed = self.gt_store.list_clips([m.name for m in read_clip_meta_info(meta_file)]) \
            if self.gt_store.backend == 'lmdb' else None
        for meta in read_clip_meta_info(meta_file):
            if meta.num_frames is None:
                raise ValueError(f'{owner}: meta_info_file {meta_file} gives no frame count for clip {meta.name!r} '
                                 f'(expected lines like "000 100 (720,1280,3)").')
            if listed is not None and len(listed[meta.name]) != meta.num_frames:
                raise ValueError(f'{owner}: meta_info_file {meta_file} says clip {meta.name!r} has {meta.num_frames} '
                                 f'frames but the lmdb {self.gt_store.root} holds {len(listed[meta.name])}.')
            keys = [self.frame_key(meta.name, i) for i in range(meta.num_frames)]
            lmdb_gt = self.gt_store.backend == 'lmdb'
            if meta.shape is not None and lmdb_gt and self.gt_store.shape(keys[0]) != meta.shape:
                raise ValueError(f'{owner}: meta_info_file {meta_file} says clip {meta.name!r} is {meta.shape} but '
                                 f'the lmdb {self.gt_store.root} stores {keys[0]!r} as {self.gt_store.shape(keys[0])}.')
            clips.append(Clip(meta.name, keys))
        return clips

    def _middle(self, length: int) -> int:
        """The anchor of a one-sample-per-clip dataset: the centre frame (window) or a centred start (clip)."""
        return (length - 1) // 2 if not self.clip_mode else (length - self.num_frame) // 2

    def _frame_indices(self, length: int, anchor: int, interval: int) -> list[int]:
        """Window: frames centred on ``anchor``; clip: frames starting at ``anchor``. Moves the anchor to a random
        valid position when the frames would leave the clip (as BasicSR does near clip ends)."""
        first = 0 if self.clip_mode else -(self.num_frame // 2) * interval
        offsets = [first + k * interval for k in range(self.num_frame)]
        lowest, highest = -offsets[0], length - 1 - offsets[-1]
        if not lowest <= anchor <= highest:
            anchor = random.randint(lowest, highest)
        return [anchor + o for o in offsets]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        clip_index, anchor = self.samples[index]
        clip = self.clips[clip_index]
        indices = self._frame_indices(len(clip.keys), anchor, random.choice(self.interval_list))
        if self.random_reverse and random.random() < 0.5:
            indices.reverse()
        keys = [clip.keys[i] for i in indices]
        gt_keys = keys if self.clip_mode else [clip.keys[indices[self.num_frame // 2]]]
        if self.gt_size is None:
            lqs, gts = self.lq_store.read(keys), self.gt_store.read(gt_keys)
        else:
            lqs, gts = self._read_crops(clip_index, keys, gt_keys)
        frames = augment(lqs + gts, self.use_hflip, self.use_rot)
        frames = frames if isinstance(frames, list) else [frames]
        lq, gt = frames_to_tensor(frames[:len(lqs)]), frames_to_tensor(frames[len(lqs):])
        if self.flip_sequence:
            lq, gt = torch.cat([lq, lq.flip(0)]), torch.cat([gt, gt.flip(0)])
        key = clip.keys[anchor] if self.sample_every_frame else clip.name
        return {'lq': lq, 'gt': gt if self.clip_mode else gt[0], 'key': key}

    def _read_crops(self, clip_index: int, keys: list[str], gt_keys: list[str]) -> tuple[list, list]:
        """A random LQ window and the GT window ``scale`` x larger, drawn as basicsr's ``paired_random_crop`` draws
        them (same ``random`` calls), but before decoding: only the rows down to the window's bottom are decoded."""
        h, w = self.lq_sizes[clip_index]
        size = self.gt_size // self.scale
        top, left = random.randint(0, h - size), random.randint(0, w - size)
        crops = []
        for store, frame_keys, s in [(self.lq_store, keys, 1), (self.gt_store, gt_keys, self.scale)]:
            frames = store.read(frame_keys, rows=(top + size) * s)
            for key, frame in zip(frame_keys, frames):
                if frame.shape[0] < (top + size) * s or frame.shape[1] != w * s:
                    raise ValueError(f'Frame {store.path(key)} in {store.root} differs in size from its clip\'s first '
                                     f'frame ({h * s}x{w * s}): {frame.shape[1]} columns, {frame.shape[0]} of the '
                                     f'{(top + size) * s} rows the crop needs.')
            crops.append([f[top * s:(top + size) * s, left * s:(left + size) * s] for f in frames])
        return crops[0], crops[1]


class _REDS(VideoTrainDataset):
    sample_every_frame = True
    required_options = VideoTrainDataset.required_options + ('num_frame',)  # no default (clips of any length)

    def frame_key(self, clip: str, index: int) -> str:
        return f'{clip}/{format(index, self.opt.get("filename_tmpl", "08d"))}'

    def select_clips(self, clips: list[Clip]) -> list[Clip]:
        partition = self.opt.get('val_partition', 'REDS4')
        if isinstance(partition, str):
            if partition not in REDS_VAL_PARTITIONS:
                raise ValueError(f"{type(self).__name__}: val_partition must be 'REDS4', 'official' or a list of clip "
                                 f'names, got {partition!r}.')
            partition = REDS_VAL_PARTITIONS[partition]
        held_out = set(partition)
        keep_val = bool(self.opt.get('test_mode', False))
        return [c for c in clips if (c.name in held_out) == keep_val]


class _Vimeo90K(VideoTrainDataset):
    sample_every_frame = False

    def frame_key(self, clip: str, index: int) -> str:
        return f'{clip}/im{index + 1}'

    def default_num_frame(self) -> int:
        return min(len(c.keys) for c in self.clips)


@register(DATASET_REGISTRY)
class REDSWindowDataset(_REDS):
    """REDS, sliding window: ``num_frame`` (odd) LR frames around one GT frame; one sample per frame.
    Options: see the module docstring (same keys as BasicSR's REDSDataset, without flows)."""
    clip_mode = False


@register(DATASET_REGISTRY)
class REDSClipDataset(_REDS):
    """REDS, recurrent: ``num_frame`` consecutive LR frames (stride from ``interval_list``) with GT for each;
    one sample per start frame. Options: see the module docstring (BasicSR's REDSRecurrentDataset keys)."""
    clip_mode = True


@register(DATASET_REGISTRY)
class Vimeo90KWindowDataset(_Vimeo90K):
    """Vimeo-90K septuplets, sliding window: ``num_frame`` (odd, default 7) LR frames around im4, GT im4.
    Options: see the module docstring (BasicSR's Vimeo90KDataset keys)."""
    clip_mode = False


@register(DATASET_REGISTRY)
class Vimeo90KClipDataset(_Vimeo90K):
    """Vimeo-90K septuplets, recurrent: all frames (``num_frame``, default 7) with GT for each;
    ``flip_sequence: true`` appends them reversed (7 -> 14), as MIA-VSR and BasicVSR train on Vimeo-90K.
    Options: see the module docstring (BasicSR's Vimeo90KRecurrentDataset keys)."""
    clip_mode = True

