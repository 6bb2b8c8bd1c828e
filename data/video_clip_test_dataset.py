"""Whole-clip validation/test dataset for any video set (REDS4, Vimeo-90K-T, Vid4-style folders), lmdb or disk.

BasicSR's ``VideoRecurrentTestDataset`` accepts only the names vid4/reds4/redsofficial, only the disk backend
and only with ``cache_data``; this one takes any ``name`` and either backend, and can cut long clips into
overlapping temporal chunks so that a recurrent model's memory stays bounded.

It also speaks the interface basicsr's recurrent video models validate with (``VideoRecurrentModel``, e.g.
under basicsr's own train.py): ``data_info`` (one entry per frame: folder, idx, lq_path, gt_path, border) and
items with ``lq``/``gt``/``folder``/``lq_path``. basicsr's models index their metric tables by the item's frame
position, so they need whole clips (no ``chunk_size``); ``VideoBaseModel``'s sliding-window validation needs
one item per frame and stays with basicsr's ``VideoTestDataset``.
"""
from __future__ import annotations

from torch.utils import data

from vsrkit.data.image_store import open_image_store
from vsrkit.data.video_clips import Clip, check_scale, frames_to_tensor, read_clip_meta_info
from vsrkit.utils.registry import DATASET_REGISTRY, register

__all__ = ['VideoClipTestDataset']


@register(DATASET_REGISTRY)
class VideoClipTestDataset(data.Dataset):
    """One item per clip (or per temporal chunk of a clip), GT for every frame.

    Options (BasicSR's test-dataset keys):
        name (str): any label, used only in messages.
        dataroot_lq (str): LR frames: an lmdb or a folder of clip folders (``<root>/<clip>/<frame>.<ext>``;
            a clip may be nested, e.g. Vimeo-90K's ``00001/0266``).
        dataroot_gt (str | None): GT frames with the same keys; None for inference without GT.
        io_backend ({type: disk | lmdb}): default disk.
        meta_info_file (str | None): clips to use, one per line, first column (BasicSR's
            ``meta_info_REDS4_test_GT.txt``, ``meta_info_Vimeo90K_test_GT.txt``, or ``sep_testlist.txt``);
            a frame count there must match the frames found. Default: every clip under dataroot_lq.
        filename_ext (str): disk frame extension (default 'png'). Frames are sorted naturally by name.
        scale (int | None): when given, GT frames must be ``scale`` x the LR frames.
        chunk_size (int | None): frames per item; None = whole clips.
        chunk_overlap (int): frames shared by consecutive chunks (< chunk_size); the last chunk ends at the
            clip's last frame, so every chunk is full length when the clip is at least chunk_size long.

    Items: ``lq`` (T, C, h, w) and ``gt`` (T, C, H, W) float RGB in [0, 1] (no ``gt`` without dataroot_gt),
    ``folder`` (clip name), ``idx`` ('<first frame>/<clip length>'), ``frame_start`` and ``num_frames_clip``
    (ints, to stitch chunks), ``lq_path`` (the LR frames' keys or file paths).
    ``data_info``: basicsr's per-frame table (see module docstring).
    """

    required_options = ('dataroot_lq',)  # read by the options check before any run starts

    def __init__(self, opt: dict):
        super().__init__()
        owner = f'{type(self).__name__} {opt.get("name", "")!r}'
        self.opt = opt
        self.lq_store = open_image_store(opt, 'dataroot_lq', owner)
        self.gt_store = open_image_store(opt, 'dataroot_gt', owner) if opt.get('dataroot_gt') else None

        meta_file = opt.get('meta_info_file')
        metas = read_clip_meta_info(meta_file) if meta_file else None
        listed = self.lq_store.list_clips(None if metas is None else [m.name for m in metas])
        self.clips = [Clip(name, keys) for name, keys in listed.items()]
        for meta in metas or []:
            if meta.num_frames is not None and meta.num_frames != len(listed[meta.name]):
                raise ValueError(f'{owner}: meta_info_file {meta_file} says clip {meta.name!r} has {meta.num_frames} '
                                 f'frames but {self.lq_store.root} holds {len(listed[meta.name])}.')
        if self.gt_store is not None:
            for clip in self.clips:
                self.gt_store.check_keys(clip.keys)
            if opt.get('scale'):
                check_scale(self.gt_store, self.lq_store, self.clips, int(opt['scale']))

        chunk_size, overlap = opt.get('chunk_size'), int(opt.get('chunk_overlap') or 0)
        if chunk_size is not None and not 0 <= overlap < int(chunk_size):
            raise ValueError(f'{owner}: chunk_overlap must be in [0, chunk_size={chunk_size}), got {overlap}.')
        self.items = [(c, start, stop) for c, clip in enumerate(self.clips)
                      for start, stop in self.chunks(len(clip.keys), chunk_size, overlap)]

    @staticmethod
    def chunks(length: int, chunk_size: int | None, overlap: int = 0) -> list[tuple[int, int]]:
        """[start, stop) frame ranges covering ``length`` frames; the last one is aligned to the clip's end."""
        if chunk_size is None or chunk_size >= length:
            return [(0, length)]
        step = chunk_size - overlap
        starts = list(range(0, length - chunk_size, step)) + [length - chunk_size]
        return [(s, s + chunk_size) for s in starts]

    @property
    def data_info(self) -> dict[str, list]:
        """basicsr's per-frame table, as its ``VideoTestDataset`` builds it: for every frame of every clip its
        ``folder`` (clip name), ``idx`` ('<frame>/<clip length>'), ``lq_path``, ``gt_path`` and ``border`` (0:
        recurrent models see every frame's neighbours)."""
        if self.opt.get('chunk_size') is not None:
            raise ValueError(f"{type(self).__name__} {self.opt.get('name', '')!r}: basicsr's video models index "
                             'their metrics by frame position within an item and need whole clips; remove '
                             'chunk_size (vsrkit\'s RecurrentVSRModel validates chunks)')
        info: dict[str, list] = {'folder': [], 'idx': [], 'lq_path': [], 'gt_path': [], 'border': []}
        for clip in self.clips:
            for index, key in enumerate(clip.keys):
                info['folder'].append(clip.name)
                info['idx'].append(f'{index}/{len(clip.keys)}')
                info['lq_path'].append(self.lq_store.path(key))
                info['gt_path'].append(self.gt_store.path(key) if self.gt_store is not None else None)
                info['border'].append(0)
        return info

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        clip_index, start, stop = self.items[index]
        clip = self.clips[clip_index]
        keys = clip.keys[start:stop]
        item = {'lq': frames_to_tensor(self.lq_store.read(keys)), 'folder': clip.name,
                'idx': f'{start}/{len(clip.keys)}', 'frame_start': start, 'num_frames_clip': len(clip.keys),
                'lq_path': [self.lq_store.path(k) for k in keys]}
        if self.gt_store is not None:
            item['gt'] = frames_to_tensor(self.gt_store.read(keys))
        return item
