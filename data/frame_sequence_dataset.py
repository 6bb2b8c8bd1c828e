"""Even/odd frame sequences for training the spatio-temporal fusion interpolator (``ConvLSTM``).

As the original: every clip is cut into consecutive chunks of ``num_frame`` frames (30 in the original; the
remainder of a clip is dropped); a chunk's even frames (0, 2, 4, …) are the input and its odd frames (1, 3, 5, …)
the targets. With an even ``num_frame`` both halves have ``num_frame / 2`` frames: ``ConvLSTM`` predicts, for each
known frame t, the frame after it — the last odd frame lies after the last even one, so the last prediction
extrapolates, exactly as the architecture's output contract says.

Frames come from ``dataroot_gt`` (a folder of frames, or of clip sub-folders such as REDS's ``000/00000000.png``, or
a BasicSR lmdb) and are converted to grey (BT.601 luma, rounded to uint8) unless ``grey: false``.

Options: dataroot_gt, io_backend ({type: disk|lmdb}), filename_ext (default png), decode_threads, clips (optional
list; default all), num_frame (even, default 30), grey (default true), gt_size (training crop; None = whole
frames), use_hflip, use_rot (training), phase, name. Items: ``{'lq': (num_frame/2, C, H, W) even frames,
'gt': (num_frame/2, C, H, W) odd frames, 'key': '<clip>/<first frame key>'}``, float in [0, 1], C = 1 (grey) or 3.
"""
from __future__ import annotations

from torch.utils.data import Dataset

from vsrkit.data.grey_rgb_dataset import augment_frames, frames_tensor, random_crop, to_grey
from vsrkit.data.image_store import open_image_store
from vsrkit.utils.registry import DATASET_REGISTRY, register


@register(DATASET_REGISTRY)
class EvenOddFrameDataset(Dataset):
    """Chunks of consecutive frames split into even (input) and odd (target) frames (see module docstring)."""

    required_options = ('dataroot_gt',)  # read by the options check before any run starts

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        self.where = f"datasets.{opt.get('name', opt.get('phase', 'dataset'))}"
        self.num_frame = int(opt.get('num_frame', 30))
        if self.num_frame < 2 or self.num_frame % 2:
            raise ValueError(f'{self.where}.num_frame: expected an even number >= 2, got {self.num_frame}')
        self.train = opt.get('phase', 'train') == 'train'
        self.gt_size = opt.get('gt_size') if self.train else None
        self.grey = bool(opt.get('grey', True))
        self.frames = open_image_store(opt, 'dataroot_gt', self.where)
        self.chunks = []
        for keys in self.frames.list_clips(opt.get('clips')).values():
            for start in range(0, len(keys) - self.num_frame + 1, self.num_frame):
                self.chunks.append(keys[start:start + self.num_frame])
        if not self.chunks:
            raise ValueError(f"{self.where}.num_frame: {self.num_frame} exceeds every clip's length in "
                             f"{opt['dataroot_gt']}")

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict:
        keys = self.chunks[index]
        frames = self.frames.read(keys)
        if self.grey:
            frames = [to_grey(f) for f in frames]
        if self.train:
            frames = random_crop(frames, self.gt_size, self.where)
            frames = augment_frames(frames, self.opt.get('use_hflip', True), self.opt.get('use_rot', False))
        clip = frames_tensor(frames)
        return {'lq': clip[0::2], 'gt': clip[1::2], 'key': keys[0]}
