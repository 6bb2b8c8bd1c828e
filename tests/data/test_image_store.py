"""vsrkit.data.image_store: one store for every dataset, disk (any image suffix or one extension) and lmdb alike,
giving what OpenCV's imread gives; PairedPatchDataset and YMultiScaleDataset read through it on both backends."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from vsrkit.data.image_store import ImageStore
from vsrkit.data.lmdb_io import close_lmdb_envs, write_lmdb
from vsrkit.data.paired_patch_dataset import PairedPatchDataset
from vsrkit.data.y_multiscale_dataset import YMultiScaleDataset


@pytest.fixture(autouse=True)
def _close_envs():
    yield
    close_lmdb_envs()


def photos() -> dict[str, np.ndarray]:
    """Real BGR photos of different sizes, one of them grey, keyed like a nested image folder."""
    return {'set/astronaut': skimage.data.astronaut()[:192, :256, ::-1],
            'set/chelsea': skimage.data.chelsea()[:160, :224, ::-1],
            'coffee': skimage.data.coffee()[:128, :192, ::-1],
            'set/camera': skimage.data.camera()[:96, :128]}


@pytest.fixture()
def pairs(tmp_path) -> Path:
    """HR as PNG (8-bit RGB: the fast path; grey: OpenCV), LR x2 as JPEG (OpenCV) named ``<name>x2``, and both as
    lmdbs with the same keys (basicsr's ``filename_tmpl: '{}x2'`` layout on disk)."""
    for key, hr in photos().items():
        lr = cv2.resize(hr, (hr.shape[1] // 2, hr.shape[0] // 2), interpolation=cv2.INTER_AREA)
        for folder, name, img, suffix in [('HR', key, hr, '.png'), ('LR', f'{key}x2', lr, '.jpg')]:
            (tmp_path / folder / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / folder / name) + suffix, img)
    write_lmdb(((k, tmp_path / 'HR' / f'{k}.png') for k in photos()), tmp_path / 'HR.lmdb')
    write_lmdb(((k, tmp_path / 'LR' / f'{k}x2.jpg') for k in photos()), tmp_path / 'LR.lmdb')
    return tmp_path


def imread(path: Path) -> np.ndarray:
    """The reference: what the datasets decoded with before the store (cv2.imread, IMREAD_COLOR)."""
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def test_disk_any_suffix_and_lmdb_read_what_imread_reads(pairs):
    hr, lr = ImageStore(pairs / 'HR', ext=None), ImageStore(pairs / 'LR', ext=None)
    hr_lmdb, lr_lmdb = ImageStore(pairs / 'HR.lmdb', 'lmdb'), ImageStore(pairs / 'LR.lmdb', 'lmdb')
    keys = sorted(photos())
    assert hr.keys() == keys and sorted(hr_lmdb.keys()) == keys
    assert lr.keys() == sorted(f'{k}x2' for k in keys)
    for store, lmdb, suffix, name in [(hr, hr_lmdb, '.png', '{}'), (lr, lr_lmdb, '.jpg', '{}x2')]:
        files = [store.path(name.format(k)) for k in keys]
        assert files == [str(store.root / name.format(k)) + suffix for k in keys]
        expected = [imread(Path(f)) for f in files]
        for key, got, from_lmdb, want in zip(keys, store.read([name.format(k) for k in keys]), lmdb.read(keys),
                                             expected):
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(from_lmdb, want)  # the lmdb stores the decoded pixels as PNG
            assert got.dtype == np.uint8 and got.shape[2] == 3
            # sized from the PNG header or by decoding (disk), from meta_info.txt (lmdb: the channels stored)
            assert store.shape(name.format(key)) == want.shape and lmdb.shape(key)[:2] == want.shape[:2]
    np.testing.assert_array_equal(hr.read(['set/chelsea'], rows=50)[0], imread(pairs / 'HR/set/chelsea.png')[:50])


def test_one_extension_store_and_clips(pairs):
    """Frame-folder mode (``<root>/<key>.<ext>``, no scan) lists clips by folder, naturally sorted."""
    store = ImageStore(pairs / 'HR', ext='png')
    assert store.list_clips() == {'': ['coffee'], 'set': ['set/astronaut', 'set/camera', 'set/chelsea']}
    assert store.path('coffee') == str(pairs / 'HR' / 'coffee.png') and 'coffee' in store and 'nope' not in store
    assert ImageStore(pairs / 'LR', ext=None).list_clips(['set']) == {
        'set': ['set/astronautx2', 'set/camerax2', 'set/chelseax2']}


def test_store_survives_pickling_into_a_worker(pairs):
    for store, key in [(ImageStore(pairs / 'LR', ext=None), 'coffeex2'), (ImageStore(pairs / 'HR.lmdb', 'lmdb'), 'coffee')]:
        copy = pickle.loads(pickle.dumps(store))
        np.testing.assert_array_equal(copy.read([key])[0], store.read([key])[0])


def test_bad_input_names_the_file_or_key(pairs, tmp_path):
    with pytest.raises(FileNotFoundError, match=r'Data root .*missing does not exist'):
        ImageStore(tmp_path / 'missing')
    with pytest.raises(ValueError, match=r"io_backend type must be one of \['disk', 'lmdb'\], got 'hdf5'"):
        ImageStore(pairs / 'HR', 'hdf5')
    with pytest.raises(FileNotFoundError, match=r"No image 'set/nope' under .*HR"):
        ImageStore(pairs / 'HR', ext=None).read(['set/nope'])
    with pytest.raises(KeyError, match=r"'set/nope' is not in the lmdb .*HR\.lmdb"):
        ImageStore(pairs / 'HR.lmdb', 'lmdb').read(['set/nope'])
    with pytest.raises(KeyError, match=r"Key 'set/nope' is not listed in .*meta_info\.txt"):
        ImageStore(pairs / 'HR.lmdb', 'lmdb').check_keys(['coffee', 'set/nope'])
    (pairs / 'HR' / 'coffee.jpg').write_bytes(b'')
    with pytest.raises(ValueError, match=r"HR/coffee\.jpg and .*HR/coffee\.png are both image 'coffee'"):
        ImageStore(pairs / 'HR', ext=None)
    (pairs / 'HR' / 'coffee.jpg').unlink()
    (pairs / 'HR' / 'set' / 'camera.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(40))
    with pytest.raises(ValueError, match=r'Cannot decode the image .*HR/set/camera\.png'):
        ImageStore(pairs / 'HR', ext=None).read(['set/camera'])


def paired_opt(pairs: Path, backend: str, **extra) -> dict:
    suffix = '.lmdb' if backend == 'lmdb' else ''
    return {'dataroot_gt': str(pairs / f'HR{suffix}'), 'dataroot_lq': str(pairs / f'LR{suffix}'), 'scale': 2,
            'io_backend': {'type': backend}, 'filename_tmpl': '{}x2', 'gt_size': 48, 'use_rot': True, 'name': 'p',
            **extra}


def same_draws(first, second):
    """(first[i], second[i]) for every index, each drawn after seeding ``random`` with i: the same random crops."""
    for index in range(len(first)):
        random.seed(index)
        a = first[index]
        random.seed(index)
        yield a, second[index]


def test_paired_dataset_same_items_on_disk_and_lmdb(pairs):
    disk, lmdb = PairedPatchDataset(paired_opt(pairs, 'disk')), PairedPatchDataset(paired_opt(pairs, 'lmdb'))
    assert disk.keys == lmdb.keys == sorted(photos()) and disk.lq_keys[0] == 'coffeex2' and lmdb.lq_keys[0] == 'coffee'
    for a, b in same_draws(disk, lmdb):
        assert torch.equal(a['gt'], b['gt']) and torch.equal(a['lq'], b['lq']) and a['key'] == b['key']
        assert a['gt'].shape == (3, 48, 48) and a['lq'].shape == (3, 24, 24)
    whole = PairedPatchDataset(paired_opt(pairs, 'disk', phase='val'))[1]  # 'set/astronaut', not cropped
    assert whole['lq_path'] == str(pairs / 'LR/set/astronautx2.jpg') and whole['gt_path'] == str(pairs / 'HR/set/astronaut.png')
    reference = imread(pairs / 'LR/set/astronautx2.jpg')[..., ::-1].transpose(2, 0, 1) / 255.0
    np.testing.assert_array_equal(whole['lq'].numpy(), reference.astype(np.float32))


def test_paired_dataset_errors_name_the_images(pairs):
    (pairs / 'LR' / 'coffeex2.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=r"'coffee'.*LR"):
        PairedPatchDataset(paired_opt(pairs, 'disk'))
    with pytest.raises(ValueError, match=r"LQ 'coffee' in the lmdb .*LR\.lmdb is 64x96 and GT 'coffee' in the lmdb "
                                         r".*HR\.lmdb is 128x192, which disagrees with scale 3"):
        PairedPatchDataset(paired_opt(pairs, 'lmdb', scale=3))


def test_y_multiscale_dataset_same_items_on_disk_and_lmdb(pairs):
    opt = {'scales': [2, 3], 'gt_size': 21, 'patches_per_image': 2}
    disk = YMultiScaleDataset({'dataroot_gt': str(pairs / 'HR'), **opt})
    lmdb = YMultiScaleDataset({'dataroot_gt': str(pairs / 'HR.lmdb'), 'io_backend': {'type': 'lmdb'}, **opt})
    assert disk.keys == lmdb.keys == sorted(photos())
    for a, b in same_draws(disk, lmdb):
        assert torch.equal(a['gt'], b['gt']) and torch.equal(a['lq'], b['lq']) and a['origin'] == b['origin']
    assert disk[0]['lq_path'] == str(pairs / 'HR' / 'coffee.png') and lmdb[0]['lq_path'] == 'coffee'
