"""REDS / Vimeo-90K training datasets and VideoClipTestDataset on the real sample clips (lmdb and disk)."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import vsrkit.data  # noqa: F401  (registers the datasets; basicsr shim first)
from basicsr.data.reds_dataset import REDSRecurrentDataset
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import DATASET_REGISTRY

from vsrkit.data.lmdb_io import LmdbImageReader, close_lmdb_envs, write_lmdb
from vsrkit.data.sample_videos import FRAMES_PER_CLIP, build_video_sample


@pytest.fixture(scope='session')
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / 'video_sample'  # the same tree test_lmdb_io.py uses
    build_video_sample(root)
    return root


def reds_opt(sample: Path, backend: str, scale: int = 4, **extra) -> dict:
    reds = sample / 'REDS'
    if backend == 'lmdb':
        gt, lq = reds / 'train_sharp_with_val.lmdb', reds / f'train_sharp_bicubic_X{scale}_with_val.lmdb'
    else:
        gt, lq = reds / 'train_sharp', reds / 'train_sharp_bicubic' / f'X{scale}'
    opt = dict(dataroot_gt=str(gt), dataroot_lq=str(lq), meta_info_file=str(reds / 'meta_info_REDS_GT.txt'),
               val_partition='REDS4', io_backend={'type': backend}, num_frame=5, gt_size=64, interval_list=[1, 2],
               random_reverse=True, use_hflip=True, use_rot=True, scale=scale)
    return {**opt, **extra}


def vimeo_opt(sample: Path, backend: str, split: str = 'train', **extra) -> dict:
    vimeo = sample / 'vimeo90k'
    if backend == 'lmdb':
        gt, lq = vimeo / f'vimeo90k_{split}_GT.lmdb', vimeo / f'vimeo90k_{split}_LR7frames.lmdb'
    else:
        gt, lq = vimeo / 'vimeo_septuplet' / 'sequences', vimeo / 'vimeo_septuplet_matlabLRx4' / 'sequences'
    meta = vimeo / f'meta_info_Vimeo90K_{split}_GT.txt'
    opt = dict(dataroot_gt=str(gt), dataroot_lq=str(lq), meta_info_file=str(meta), io_backend={'type': backend},
               num_frame=7, gt_size=64, random_reverse=True, use_hflip=True, use_rot=True, scale=4)
    return {**opt, **extra}


def make(name: str, opt: dict):
    return DATASET_REGISTRY.get(name)(opt)


def item(dataset, index: int, seed: int) -> dict:
    random.seed(seed)
    return dataset[index]


def bicubic(frame: torch.Tensor, scale: int) -> np.ndarray:
    """MATLAB bicubic of a (C, H, W) [0, 1] frame, rounded like the LR frames on disk."""
    return np.round(imresize(frame.numpy().transpose(1, 2, 0), 1 / scale) * 255.) / 255.


def assert_aligned(gt: torch.Tensor, lq: torch.Tensor, scale: int) -> None:
    """Downscaling the GT crop gives the LR crop away from its border (where bicubic saw pixels outside the
    crop), and a one-pixel LR shift would not: the check can tell aligned from misaligned."""
    down = bicubic(gt, scale)[2:-2, 2:-2]
    lr = lq.numpy().transpose(1, 2, 0)
    assert np.abs(down - lr[2:-2, 2:-2]).max() <= 2.5 / 255
    assert np.abs(down - lr[3:-1, 2:-2]).mean() > 4 * np.abs(down - lr[2:-2, 2:-2]).mean()


@pytest.mark.parametrize('backend', ['lmdb', 'disk'])
def test_reds_datasets_both_modes(sample, backend):
    window = make('REDSWindowDataset', reds_opt(sample, backend))
    clip = make('REDSClipDataset', reds_opt(sample, backend))
    train_clips = ['001', '002', '003', '004', '005', '006']  # REDS4 names 000, 011, 015 held out
    assert [c.name for c in clip.clips] == train_clips and len(clip) == len(window) == 6 * FRAMES_PER_CLIP
    w, c = item(window, 5, 0), item(clip, 5, 0)
    assert w['lq'].shape == (5, 3, 16, 16) and w['gt'].shape == (3, 64, 64) and w['key'] == '001/00000005'
    assert c['lq'].shape == (5, 3, 16, 16) and c['gt'].shape == (5, 3, 64, 64)
    for x in (w['lq'], w['gt'], c['lq'], c['gt']):
        assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.std()) > 0.02
    test_mode = make('REDSClipDataset', reds_opt(sample, backend, test_mode=True))
    assert [x.name for x in test_mode.clips] == ['000', '011', '015']


def test_lmdb_and_disk_give_identical_items(sample):
    for name, opts in [('REDSClipDataset', reds_opt), ('REDSWindowDataset', reds_opt),
                       ('Vimeo90KClipDataset', vimeo_opt), ('Vimeo90KWindowDataset', vimeo_opt)]:
        lmdb_ds, disk_ds = make(name, opts(sample, 'lmdb')), make(name, opts(sample, 'disk'))
        for index in (0, len(lmdb_ds) - 1):
            a, b = item(lmdb_ds, index, 7), item(disk_ds, index, 7)
            assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt']) and a['key'] == b['key']


@pytest.mark.parametrize('scale', [4, 2])
def test_clip_augmentation_keeps_lr_gt_aligned(sample, scale):
    dataset = make('REDSClipDataset', reds_opt(sample, 'lmdb', scale=scale, num_frame=4, gt_size=48))
    for seed in range(6):  # covers flips, rotations, reversal and interval 2
        sample_item = item(dataset, 3 * seed, seed)
        for t in range(4):
            assert_aligned(sample_item['gt'][t], sample_item['lq'][t], scale)


def test_window_gt_is_the_centre_frame(sample):
    dataset = make('REDSWindowDataset', reds_opt(sample, 'disk', num_frame=5, gt_size=64))
    for seed in range(4):
        sample_item = item(dataset, 17 * seed + 1, seed)
        assert_aligned(sample_item['gt'], sample_item['lq'][2], 4)
    vimeo = make('Vimeo90KWindowDataset', vimeo_opt(sample, 'lmdb', num_frame=5))
    sample_item = item(vimeo, 2, 3)
    assert sample_item['lq'].shape == (5, 3, 16, 16) and sample_item['key'] == '00001/0003'
    assert_aligned(sample_item['gt'], sample_item['lq'][2], 4)


def test_vimeo_clip_flip_sequence(sample):
    dataset = make('Vimeo90KClipDataset', vimeo_opt(sample, 'lmdb', flip_sequence=True, num_frame=None))
    assert len(dataset) == 8 and dataset.num_frame == 7
    sample_item = item(dataset, 4, 1)
    lq, gt = sample_item['lq'], sample_item['gt']
    assert lq.shape == (14, 3, 16, 16) and gt.shape == (14, 3, 64, 64)
    assert torch.equal(lq[7:], lq[:7].flip(0)) and torch.equal(gt[7:], gt[:7].flip(0))
    for t in range(7):
        assert_aligned(gt[t], lq[t], 4)


def test_dataloader_forked_workers_on_lmdb(sample):
    dataset = make('REDSClipDataset', reds_opt(sample, 'lmdb'))  # construction opened the lmdbs in this process
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2,
                                         multiprocessing_context='fork')
    batches = [b for _, b in zip(range(3), loader)]
    assert all(b['lq'].shape == (4, 5, 3, 16, 16) and b['gt'].shape == (4, 5, 3, 64, 64) for b in batches)
    assert dataset[0]['lq'].shape == (5, 3, 16, 16)  # the parent's handles still work


def test_same_items_as_basicsr_recurrent_dataset(sample):
    opt = reds_opt(sample, 'lmdb', interval_list=[1], random_reverse=False)
    ours = make('REDSClipDataset', dict(opt))
    close_lmdb_envs()  # py-lmdb >= 2 lets basicsr's LmdbBackend open these files only if we hold no handle
    theirs = REDSRecurrentDataset({**opt, 'test_mode': False, 'io_backend': dict(opt['io_backend'])})
    # basicsr assumes 100-frame clips: only starts far enough from the end of our 20-frame clips are comparable
    indices = [0, 7, 23, 61]
    expected = [item(theirs, i, i) for i in indices]
    for env in theirs.file_client.client._client.values():
        env.close()
    for index, want in zip(indices, expected):
        got = item(ours, index, index)
        assert got['key'] == want['key']
        torch.testing.assert_close(got['lq'], want['lq'], rtol=0, atol=1e-6)
        torch.testing.assert_close(got['gt'], want['gt'], rtol=0, atol=1e-6)


@pytest.mark.parametrize('backend', ['lmdb', 'disk'])
def test_clip_test_dataset_chunks(sample, backend):
    opt = reds_opt(sample, backend)
    base = dict(name='my-reds4', dataroot_gt=opt['dataroot_gt'], dataroot_lq=opt['dataroot_lq'],
                meta_info_file=str(sample / 'REDS' / 'meta_info_REDS4_test_GT.txt'), io_backend=opt['io_backend'],
                scale=4)
    whole = make('VideoClipTestDataset', base)
    assert len(whole) == 3 and [whole[i]['folder'] for i in range(3)] == ['000', '011', '015']
    clip = whole[1]
    assert clip['lq'].shape == (20, 3, 32, 48) and clip['gt'].shape == (20, 3, 128, 192) and clip['idx'] == '0/20'
    chunked = make('VideoClipTestDataset', {**base, 'chunk_size': 8, 'chunk_overlap': 2})
    assert len(chunked) == 9
    parts = [chunked[i] for i in range(3, 6)]
    assert [p['frame_start'] for p in parts] == [0, 6, 12] and all(p['folder'] == '011' for p in parts)
    for p in parts:
        assert torch.equal(p['lq'], clip['lq'][p['frame_start']:p['frame_start'] + 8])
        assert torch.equal(p['gt'], clip['gt'][p['frame_start']:p['frame_start'] + 8])
    vimeo = vimeo_opt(sample, backend, split='test')
    vimeo_t = make('VideoClipTestDataset', dict(name='Vimeo-90K-T', **{k: vimeo[k] for k in (
        'dataroot_gt', 'dataroot_lq', 'meta_info_file', 'io_backend')}))
    assert len(vimeo_t) == 4 and vimeo_t[0]['lq'].shape == (7, 3, 32, 48) and vimeo_t[0]['folder'] == '00004/0001'


def test_clip_test_dataset_vid4_style_folders(sample, tmp_path):
    """Any names, naturally sorted frames, no meta_info, no GT."""
    for clip, source in [('calendar', '003'), ('walk', '006')]:
        folder = tmp_path / 'BIx4' / clip
        folder.mkdir(parents=True)
        for i in range(12):
            shutil.copy(sample / 'REDS' / 'train_sharp_bicubic' / 'X4' / source / f'{i:08d}.png', folder / f'f{i}.png')
    dataset = make('VideoClipTestDataset', dict(name='vid4-like', dataroot_lq=str(tmp_path / 'BIx4'),
                                                io_backend={'type': 'disk'}, chunk_size=5, chunk_overlap=1))
    assert [c.name for c in dataset.clips] == ['calendar', 'walk'] and len(dataset) == 6
    assert dataset.clips[0].keys[:3] == ['calendar/f0', 'calendar/f1', 'calendar/f2'] and 'gt' not in dataset[0]
    reference = LmdbImageReader(sample / 'REDS' / 'train_sharp_bicubic_X4_with_val.lmdb').get_image('003/00000010')
    last = dataset[2]  # frames 7..11 of 'calendar'
    np.testing.assert_array_equal((last['lq'][3].numpy().transpose(1, 2, 0)[..., ::-1] * 255).round(), reference)


# ------------------------------------------------------------------------------------------- bad input
def _broken_lmdb(sample: Path, tmp_path: Path, drop: str | None = None, extra_meta: str | None = None) -> Path:
    """A copy of the x4 LR lmdb without one key, or with a meta_info line for a key that is not stored."""
    source = sample / 'REDS' / 'train_sharp_bicubic_X4_with_val.lmdb'
    reader = LmdbImageReader(source)
    keys = [line.split('.png')[0] for line in (source / 'meta_info.txt').read_text().splitlines()]
    out = write_lmdb(((k, reader.get_image(k)) for k in keys if k != drop), tmp_path / 'lq.lmdb')
    if extra_meta:
        with open(out / 'meta_info.txt', 'a') as meta:
            meta.write(f'{extra_meta}.png (32,48,3) 1\n')
    return out


def test_bad_input_errors_at_construction(sample, tmp_path):
    dropped = _broken_lmdb(sample, tmp_path, drop='004/00000007')
    with pytest.raises(KeyError, match=rf"'004/00000007'.*{dropped}"):
        make('REDSClipDataset', reds_opt(sample, 'lmdb', dataroot_lq=str(dropped)))

    phantom = _broken_lmdb(sample, tmp_path / 'p', extra_meta='002/00000099')
    meta = tmp_path / 'meta_phantom.txt'
    meta.write_text('002 21 (128,192,3)\n')
    with pytest.raises(ValueError, match=r"clip '002' has 21 frames but the lmdb .* holds 20"):
        make('REDSClipDataset', reds_opt(sample, 'lmdb', meta_info_file=str(meta)))
    gt_phantom = dict(reds_opt(sample, 'lmdb'), dataroot_gt=str(phantom), dataroot_lq=str(phantom), scale=1,
                      gt_size=16, meta_info_file=None)  # clips = what the lmdb's meta_info.txt lists
    not_stored = rf"'002/00000099' is listed in meta_info.txt but not stored in the lmdb {phantom}"
    with pytest.raises(KeyError, match=not_stored):
        make('REDSClipDataset', gt_phantom)

    with pytest.raises(ValueError, match=r"clip '001' has 20 frames, fewer than the 21"):
        make('REDSClipDataset', reds_opt(sample, 'lmdb', num_frame=21, interval_list=[1]))
    with pytest.raises(ValueError, match=r"fewer than the 39 that num_frame=20 with interval 2"):
        make('REDSClipDataset', reds_opt(sample, 'disk', num_frame=20))
    with pytest.raises(ValueError, match=r"GT frame .* is 128x192 but the LQ frame .* is 64x96; with scale=4"):
        x2_lq = reds_opt(sample, 'lmdb', 2)['dataroot_lq']
        make('REDSWindowDataset', reds_opt(sample, 'lmdb', scale=4, dataroot_lq=x2_lq))
    with pytest.raises(ValueError, match=r"is 128x192 but the LQ frame .* is 64x96; with scale=4"):
        make('VideoClipTestDataset', dict(reds_opt(sample, 'disk', 2), name='x', scale=4))

    bad = tmp_path / 'bad_meta.txt'
    bad.write_text('001 20 (128,192,3)\n002 20 (128;192,3)\n')
    with pytest.raises(ValueError, match=rf'{bad}, line 2'):
        make('REDSClipDataset', reds_opt(sample, 'lmdb', meta_info_file=str(bad)))
    with pytest.raises(ValueError, match='val_partition'):
        make('REDSClipDataset', reds_opt(sample, 'lmdb', val_partition='REDS5'))
    with pytest.raises(ValueError, match='num_frame must be odd'):
        make('REDSWindowDataset', reds_opt(sample, 'lmdb', num_frame=4))
    with pytest.raises(KeyError, match="needs the option 'dataroot_lq'"):
        make('REDSClipDataset', reds_opt(sample, 'lmdb', dataroot_lq=None))
    with pytest.raises(FileNotFoundError, match='00000005.png'):
        broken = tmp_path / 'disk_lq'
        shutil.copytree(sample / 'REDS' / 'train_sharp_bicubic' / 'X4', broken)
        (broken / '003' / '00000005.png').unlink()
        make('REDSWindowDataset', reds_opt(sample, 'disk', dataroot_lq=str(broken)))
    with pytest.raises(ValueError, match=r"gt_size 256 needs LQ frames of at least 64x64 \(scale 4\), but clip '001' "
                                         r".* is 32x48"):
        make('REDSClipDataset', reds_opt(sample, 'disk', gt_size=256))
    with pytest.raises(KeyError, match=r"Clip\(s\) \['999'\] have no keys in the lmdb"):
        (tmp_path / 'm999.txt').write_text('999 20\n')
        make('VideoClipTestDataset', dict(reds_opt(sample, 'lmdb'), name='x',
                                          meta_info_file=str(tmp_path / 'm999.txt')))


def test_a_frame_of_another_size_inside_a_clip_is_named(sample, tmp_path):
    """On disk only each clip's first frame is sized at construction; the crop then checks every frame it reads."""
    lq = tmp_path / 'lq'
    shutil.copytree(sample / 'REDS' / 'train_sharp_bicubic' / 'X4', lq)
    odd = lq / '001' / '00000003.png'
    cv2.imwrite(str(odd), cv2.imread(str(odd))[:, :40])
    dataset = make('REDSClipDataset', reds_opt(sample, 'disk', dataroot_lq=str(lq), interval_list=[1],
                                               random_reverse=False))
    first = next(i for i, (clip, start) in enumerate(dataset.samples) if dataset.clips[clip].name == '001' and start == 1)
    with pytest.raises(ValueError, match=rf"Frame {odd} .* differs in size from its clip's first frame \(32x48\): 40 columns"):
        item(dataset, first, 0)
