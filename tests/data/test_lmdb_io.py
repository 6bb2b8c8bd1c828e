"""vsrkit.data.lmdb_io and scripts/create_lmdb.py: BasicSR format both ways, per-process envs, resume, map growth."""
from __future__ import annotations

import importlib.util
import multiprocessing
import pickle
import re
import shutil
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
import skimage.data

import vsrkit.data  # noqa: F401  (basicsr shim first)
from basicsr.utils.file_client import FileClient
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

from vsrkit.data import lmdb_io
from vsrkit.data.lmdb_io import (LmdbImageReader, close_lmdb_envs, lmdb_env, make_lmdb_from_folder, read_meta_info,
                                 verify_lmdb, write_lmdb)
from vsrkit.data.sample_videos import build_video_sample

ROOT = Path(__file__).resolve().parents[2]


def _load_cli():
    spec = importlib.util.spec_from_file_location('create_lmdb', ROOT / 'scripts' / 'create_lmdb.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def frames() -> dict[str, np.ndarray]:
    """Real BGR images of mixed sizes (and one greyscale) keyed like REDS frames."""
    astronaut = skimage.data.astronaut()[..., ::-1]
    chelsea = skimage.data.chelsea()[..., ::-1]
    out = {f'{c:03d}/{i:08d}': np.ascontiguousarray(src[8 * i:8 * i + 96, 16 * c:16 * c + 128])
           for c, src in enumerate([astronaut, chelsea]) for i in range(6)}
    out['002/00000000'] = skimage.data.camera()[:64, :80]
    return out


@pytest.fixture()
def image_folder(tmp_path, frames) -> Path:
    folder = tmp_path / 'images'
    for key, img in frames.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f'{key}.png'), img)
    return folder


@pytest.fixture(autouse=True)
def _close_envs():
    yield
    close_lmdb_envs()  # every test starts without handles, so basicsr may open the same files


def test_roundtrip_values_are_basicsr_png_bytes(tmp_path, frames):
    out = write_lmdb(frames.items(), tmp_path / 'x.lmdb', compress_level=1)
    reader = LmdbImageReader(out)
    assert len(reader) == len(frames)
    for key, img in frames.items():
        assert reader.get_bytes(key) == cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
        expected = img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        np.testing.assert_array_equal(reader.get_image(key), expected)
    lines = (out / 'meta_info.txt').read_text().splitlines()
    assert lines[0] == '000/00000000.png (96,128,3) 1' and lines[-1] == '002/00000000.png (64,80,1) 1'
    assert [m.key for m in read_meta_info(out)] == list(frames)
    assert not lmdb_io.incomplete_path(out).exists()


def test_reads_basicsr_made_lmdb_and_matches_ours(tmp_path, image_folder, frames):
    paths = sorted(str(p.relative_to(image_folder)) for p in image_folder.rglob('*.png'))
    keys = [p[:-4] for p in paths]
    theirs = tmp_path / 'theirs.lmdb'
    make_lmdb_from_imgs(str(image_folder), str(theirs), paths, keys)
    ours = make_lmdb_from_folder(image_folder, tmp_path / 'ours.lmdb')
    assert (theirs / 'meta_info.txt').read_text() == (ours / 'meta_info.txt').read_text()
    theirs_reader, ours_reader = LmdbImageReader(theirs), LmdbImageReader(ours)
    for key in keys:
        assert theirs_reader.get_bytes(key) == ours_reader.get_bytes(key)
    np.testing.assert_array_equal(theirs_reader.get_image('001/00000002'), frames['001/00000002'])


def test_basicsr_lmdb_backend_reads_ours(tmp_path, frames):
    out = write_lmdb(frames.items(), tmp_path / 'x.lmdb')
    client = FileClient('lmdb', db_paths=[str(out)], client_keys=['gt'])
    try:
        value = client.get('001/00000003', 'gt')
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR),
                                      frames['001/00000003'])
    finally:
        client.client._client['gt'].close()


def _read_in_worker(args):
    reader, key = args
    return reader.get_image(key).sum()


def test_env_once_per_process_and_reader_survives_fork(tmp_path, frames):
    out = write_lmdb(frames.items(), tmp_path / 'x.lmdb')
    reader = LmdbImageReader(out)
    assert lmdb_env(out) is lmdb_env(str(out) + '/') is reader.env  # one handle per (pid, resolved path)
    expected = [int(v.sum()) for k, v in frames.items() if v.ndim == 3][:4]
    keys = [k for k, v in frames.items() if v.ndim == 3][:4]
    state = pickle.dumps(reader)
    assert len(state) < 300 and b'Environment' not in state
    with multiprocessing.get_context('fork').Pool(2) as pool:  # the parent holds the env open while forking
        assert pool.map(_read_in_worker, [(reader, k) for k in keys]) == expected
    assert reader.get_image(keys[0]).sum() == expected[0]


def test_clear_errors(tmp_path, frames):
    out = write_lmdb(frames.items(), tmp_path / 'x.lmdb')
    with lmdb.open(str(out), map_size=1 << 24) as env, env.begin(write=True) as txn:
        txn.put(b'000/00000001', b'not a png')
    reader = LmdbImageReader(out)
    with pytest.raises(KeyError, match=rf"'nope/1'.*{out}"):
        reader.get_bytes('nope/1')
    with pytest.raises(ValueError, match=rf"Cannot decode.*'000/00000001'.*{out}"):
        reader.get_image('000/00000001')
    with pytest.raises(ValueError, match=r"'000/00000001': value does not decode"):
        verify_lmdb(out)
    bad = tmp_path / 'meta.txt'
    bad.write_text('000/00000000.png (96,128,3) 1\n000/00000001.png 96x128 1\n')
    with pytest.raises(ValueError, match=rf'{bad}, line 2'):
        read_meta_info(bad)
    with pytest.raises(FileNotFoundError, match='meta_info'):
        read_meta_info(tmp_path)
    with pytest.raises(FileNotFoundError, match='No lmdb'):
        lmdb_env(tmp_path / 'absent.lmdb')
    with pytest.raises(ValueError, match='whitespace'):
        write_lmdb([('a b', frames['000/00000000'])], tmp_path / 'k.lmdb')


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_writes_each_key_once(tmp_path, frames, monkeypatch):
    encoded: list[int] = []
    real_encode = lmdb_io.encode_png
    monkeypatch.setattr(lmdb_io, 'encode_png', lambda img, level=1: encoded.append(1) or real_encode(img, level))
    items = list(frames.items())

    def dying(n):
        for i, item in enumerate(items):
            if i == n:
                raise _Interrupt
            yield item

    target = tmp_path / 'x.lmdb'
    with pytest.raises(_Interrupt):
        write_lmdb(dying(9), target, batch_bytes=1)  # commit after every key
    work = lmdb_io.incomplete_path(target)
    assert not target.exists() and work.is_dir() and not (work / 'meta_info.txt').exists()
    with lmdb.open(str(work), readonly=True, lock=False) as env:
        committed = env.stat()['entries']
    assert committed == 9
    encoded.clear()
    write_lmdb(items, target, batch_bytes=1)
    assert len(encoded) == len(items) - committed  # committed keys were skipped, not re-encoded or re-put
    assert not work.exists()
    assert verify_lmdb(target) == len(items)
    assert [m.key for m in read_meta_info(target)] == [k for k, _ in items]


def test_map_grows_from_tiny_initial_size(tmp_path, frames):
    big = {f'{k}_{j}': v for k, v in frames.items() for j in range(4)}  # ~1.3 MB of PNG
    out = write_lmdb(big.items(), tmp_path / 'x.lmdb', map_size=64 << 10, batch_bytes=256 << 10)
    assert verify_lmdb(out) == len(big)
    assert lmdb_env(out).info()['map_size'] > 64 << 10


def test_refuses_to_overwrite_and_overwrite_swaps(tmp_path, frames):
    items = list(frames.items())
    out = write_lmdb(items[:3], tmp_path / 'x.lmdb')
    before = (out / 'data.mdb').read_bytes()
    with pytest.raises(FileExistsError, match='overwrite'):
        write_lmdb(items, out)
    assert (out / 'data.mdb').read_bytes() == before
    assert len(LmdbImageReader(out)) == 3
    write_lmdb(items, out, overwrite=True)
    assert len(LmdbImageReader(out)) == len(items)  # the cached handle of the replaced lmdb was dropped
    with pytest.raises(ValueError, match='.lmdb'):
        write_lmdb(items, tmp_path / 'no_suffix')
    with pytest.raises(ValueError, match='repeat a key'):
        write_lmdb(items + items[:1], tmp_path / 'dup.lmdb')


def test_cli_folder_verify_overwrite(tmp_path, image_folder, frames, capsys):
    cli = _load_cli()
    out = tmp_path / 'cli.lmdb'
    assert cli.main(['--dataset', 'folder', '--input', str(image_folder), '--output', str(out), '--verify']) == 0
    capsys.readouterr()
    assert cli.main(['--dataset', 'folder', '--input', str(image_folder), '--output', str(out)]) == 1
    assert f'error: {out} already exist(s); pass --overwrite' in capsys.readouterr().err  # one line, no traceback
    close_lmdb_envs()
    with lmdb.open(str(out), map_size=1 << 24) as env, env.begin(write=True) as txn:
        txn.put(b'001/00000004', cv2.imencode('.png', frames['001/00000004'][:10])[1].tobytes())
    wrong_shape = r"'001/00000004': decodes to \(10, 128, 3\), meta_info.txt says \(96, 128, 3\)"
    assert cli.main(['--dataset', 'folder', '--input', str(image_folder), '--output', str(out), '--verify']) == 1
    assert re.search(wrong_shape, capsys.readouterr().err)
    close_lmdb_envs()
    assert cli.main(['--dataset', 'folder', '--input', str(image_folder), '--output', str(out), '--overwrite',
                     '--verify']) == 0


def test_cli_presets_on_sample(tmp_path_factory, tmp_path):
    sample = tmp_path_factory.getbasetemp() / 'video_sample'
    build_video_sample(sample)
    cli = _load_cli()
    vimeo = tmp_path / 'vimeo90k'
    shutil.copytree(sample / 'vimeo90k' / 'vimeo_septuplet', vimeo / 'vimeo_septuplet')
    shutil.copytree(sample / 'vimeo90k' / 'vimeo_septuplet_matlabLRx4', vimeo / 'vimeo_septuplet_matlabLRx4')
    cli.main(['--dataset', 'vimeo90k', '--input', str(vimeo), '--split', 'test'])
    reference = sample / 'vimeo90k' / 'vimeo90k_test_LR7frames.lmdb'
    assert (vimeo / 'vimeo90k_test_LR7frames.lmdb' / 'meta_info.txt').read_text() == \
        (reference / 'meta_info.txt').read_text()
    assert len(read_meta_info(vimeo / 'vimeo90k_test_GT.lmdb')) == 4 * 7

    reds = tmp_path / 'REDS'
    for source, target in [('000', '000'), ('001', '001'), ('011', '000')]:  # 011 plays val_sharp/000
        split = 'train' if source == target else 'val'
        shutil.copytree(sample / 'REDS' / 'train_sharp' / source, reds / f'{split}_sharp' / target)
        shutil.copytree(sample / 'REDS' / 'train_sharp_bicubic' / 'X4' / source,
                        reds / f'{split}_sharp_bicubic' / 'X4' / target)
    cli.main(['--dataset', 'reds', '--input', str(reds), '--verify'])
    keys = [m.key for m in read_meta_info(reds / 'train_sharp_bicubic_with_val.lmdb')]
    assert len(keys) == 60 and keys[0] == '000/00000000' and keys[-1] == '240/00000019'
    regrouped = LmdbImageReader(reds / 'train_sharp_with_val.lmdb').get_image('240/00000005')
    original = LmdbImageReader(sample / 'REDS' / 'train_sharp_with_val.lmdb').get_image('011/00000005')
    np.testing.assert_array_equal(regrouped, original)
