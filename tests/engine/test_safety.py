"""Issue 15: nothing a user has is moved, replaced or silently reused, and every bad input is one line before
anything is touched. One test (or group) per numbered case of the issue; each reproduces the case and checks
the behaviour that must hold.

Training runs use a tiny ELSR on the sample photos (datasets/sample/images, built from scikit-image's photos on
first use) so that each run takes seconds; the lock and torchrun cases run real processes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest
import torch
import yaml

from vsrkit.data.lmdb_io import close_lmdb_envs
from vsrkit.data.sample_data import SAMPLE_BUILDERS, SAMPLE_FILES, sample_builder_for
from vsrkit.data.sampling import ShardedEpochSampler
from vsrkit.engine.experiment import LOCK_NAME
from vsrkit.engine.option_checks import check_options
from vsrkit.engine.options import load_options
from vsrkit.engine.train_loop import main as train_main
from vsrkit.utils.atomic import atomic_save
from vsrkit.utils.signature import OptionsError

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / 'datasets' / 'sample'
PYTHON_ENV = {**os.environ, 'PYTHON': sys.executable}


@pytest.fixture(scope='module')
def sample_images() -> Path:
    SAMPLE_BUILDERS['images'](SAMPLE / 'images')
    return SAMPLE / 'images'


def options(tmp_path: Path, name: str, **train) -> dict:
    """A tiny ELSR x2 run on the sample photos' lmdbs, experiments under tmp_path."""
    return {
        'name': name, 'model_type': 'ImageSRModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 5,
        'datasets': {'train': {
            'type': 'PairedPatchDataset', 'dataroot_gt': 'datasets/sample/images/train/HR.lmdb',
            'dataroot_lq': 'datasets/sample/images/train/LR_bicubic_X2.lmdb', 'io_backend': {'type': 'lmdb'},
            'gt_size': 32, 'batch_size_per_gpu': 1, 'num_worker_per_gpu': 0, 'use_hflip': True, 'use_rot': False}},
        'network_g': {'type': 'ELSR', 'scale': 2, 'num_feat': 6},
        'path': {'experiments_root': str(tmp_path / 'experiments' / name)},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': 4,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}, **train},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }


def write(tmp_path: Path, opt: dict, file: str = 'opt.yml') -> Path:
    path = tmp_path / file
    path.write_text(yaml.safe_dump(opt))
    return path


def history(root: Path) -> list[int]:
    return [json.loads(line)['iter'] for line in (root / 'train_log.jsonl').read_text().splitlines()]


def tree(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its inode: renaming or replacing anything changes this. A live run's
    atomic writes in progress (``*.tmp``, renamed into place when complete) are not the user's files yet."""
    return {p.relative_to(folder).as_posix(): p.stat().st_ino for p in sorted(folder.rglob('*'))
            if p.is_file() and p.suffix != '.tmp'}


def wait_for(predicate, seconds: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + seconds
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f'process ended early: {proc.communicate()[0][-3000:]}')
        if time.time() > deadline:
            raise AssertionError('timed out')
        time.sleep(0.3)


# ---------------------------------------------------------------------------------------------- case 1: the lock
def test_1_a_second_run_of_a_live_experiment_stops_at_once_and_moves_nothing(tmp_path, sample_images, capsys):
    """The live run is a subprocess; the second run is this (pytest's) process: two real processes."""
    opt = write(tmp_path, options(tmp_path, 'live', total_iter=1_000_000))
    root = tmp_path / 'experiments' / 'live'
    first = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), '-opt', str(opt)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (root / 'train_log.jsonl').is_file() and len(history(root)) >= 2, 240, first)
        folder = root.stat().st_ino
        before = tree(root)
        capsys.readouterr()
        started = time.time()
        assert train_main(['-opt', str(opt)], root=ROOT) == 2
        assert time.time() - started < 30  # at once: no dataset or network is built first
        out = capsys.readouterr()
        assert out.out == '' and 'Traceback' not in out.err and len(out.err.strip().splitlines()) == 1, out
        assert f'{root} is in use' in out.err and f'pid {first.pid} on {socket.gethostname()}' in out.err
        assert train_main(['-opt', str(opt), '--check-only'], root=ROOT) == 2  # what dist_train.sh runs first
        assert f'pid {first.pid}' in capsys.readouterr().err
        assert not list(root.parent.glob('live_archived_*')) and root.stat().st_ino == folder
        after = tree(root)
        before.pop('models/net_g_latest.pth')  # the live run replaces it at each save
        assert {k: v for k, v in after.items() if k in before} == before  # nothing renamed or replaced
        logged = len(history(root))
        wait_for(lambda: len(history(root)) > logged, 120, first)  # the live run still logs into its folder
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 143, out[-2000:]
    # the lock died with the run: a fresh start of the same name now archives the folder, after its checks
    stopped = history(root)[-1]
    assert train_main(['-opt', str(opt), '--force_yml', 'train:total_iter=1'], root=ROOT) == 0
    archived = list(root.parent.glob('live_archived_*'))
    assert len(archived) == 1 and (archived[0] / 'training_states' / f'{stopped}.state').is_file()
    assert not (archived[0] / LOCK_NAME).exists() and history(root) == [1]


# ------------------------------------------------------------------------------- case 2: missing required option
def test_2_a_missing_required_option_is_one_line_and_touches_nothing(tmp_path, sample_images, capsys):
    opt = options(tmp_path, 'two')
    path = write(tmp_path, opt)
    root = tmp_path / 'experiments' / 'two'
    assert train_main(['-opt', str(path), '--force_yml', 'train:total_iter=2'], root=ROOT) == 0
    before = tree(root)
    del opt['datasets']['train']['dataroot_gt']
    broken = write(tmp_path, opt, 'broken.yml')
    capsys.readouterr()
    assert train_main(['-opt', str(broken)], root=ROOT) == 2
    err = capsys.readouterr().err
    assert 'datasets.train.dataroot_gt: missing; expected a value (PairedPatchDataset needs it)' in err
    assert 'Traceback' not in err and tree(root) == before and not list(root.parent.glob('two_archived_*'))
    # --auto_resume afterwards resumes where the states are
    assert train_main(['-opt', str(path), '--auto_resume'], root=ROOT) == 0
    assert history(root) == [1, 2, 3, 4]


def test_2_required_options_come_from_the_dataset_classes(tmp_path):
    opt = yaml.safe_load((ROOT / 'options' / 'miavsr_sample.yml').read_text())
    opt['datasets']['train'].pop('num_frame')
    with pytest.raises(OptionsError, match=r'datasets\.train\.num_frame: missing; expected a value \(REDSClipDataset'):
        check_options(load_options(write(tmp_path, opt), root=ROOT))


def test_2_auto_resume_never_silently_starts_over(tmp_path, sample_images, capsys):
    """States only in an archived folder (a fresh start moved them): --auto_resume says where they are."""
    path = write(tmp_path, options(tmp_path, 'moved'))
    root = tmp_path / 'experiments' / 'moved'
    assert train_main(['-opt', str(path), '--force_yml', 'train:total_iter=2'], root=ROOT) == 0
    archived = root.with_name('moved_archived_20000101_000000')
    root.rename(archived)
    capsys.readouterr()
    assert train_main(['-opt', str(path), '--auto_resume'], root=ROOT) == 2
    err = capsys.readouterr().err
    assert f'latest: {archived}/training_states/2.state' in err and 'Traceback' not in err
    assert not (root / 'train_log.jsonl').exists()  # it did not start over
    assert train_main(['-opt', str(path), '--auto_resume', '--force_yml',
                       f'path:resume_state={archived}/training_states/2.state'], root=ROOT) == 0
    assert history(root) == [3, 4]  # continued from the archived state (the earlier lines stay in that folder)


def logged_steps(folder: Path) -> list[int]:
    """The iterations of the 'lr' scalar as TensorBoard shows the run in ``folder`` (purged steps hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder))
    events.Reload()
    return [event.step for event in events.Scalars('lr')]


def test_2_tensorboard_shows_each_iteration_once_across_resumes_and_fresh_starts(tmp_path, sample_images, capsys):
    """Resuming hides what the stopped run logged after the state; a fresh start archives the earlier events
    beside the experiment folder's archive, where TensorBoard would otherwise draw both runs as one."""
    opt = options(tmp_path, 'tb')
    events = tmp_path / 'tb_logger' / 'tb'
    opt['logger']['use_tb_logger'] = True
    opt['path']['tb_logger'] = str(events)
    path = write(tmp_path, opt)
    root = tmp_path / 'experiments' / 'tb'
    assert train_main(['-opt', str(path)], root=ROOT) == 0
    assert logged_steps(events) == [1, 2, 3, 4]
    assert train_main(['-opt', str(path), '--force_yml', f'path:resume_state={root}/training_states/2.state'],
                      root=ROOT) == 0
    assert logged_steps(events) == [1, 2, 3, 4]  # 3 and 4 of the first run hidden, the resumed run's shown
    assert len(list(events.glob('events.out.tfevents.*'))) == 2
    assert train_main(['-opt', str(path), '--force_yml', 'train:total_iter=2'], root=ROOT) == 0
    archived = list(events.parent.glob('tb_archived_*'))
    assert len(archived) == 1 and logged_steps(archived[0]) == [1, 2, 3, 4]
    assert logged_steps(events) == [1, 2] and len(list(root.parent.glob('tb_archived_*'))) == 1


def test_2_a_state_of_another_network_is_one_line_and_touches_nothing(tmp_path, sample_images, capsys):
    path = write(tmp_path, options(tmp_path, 'other'))
    root = tmp_path / 'experiments' / 'other'
    assert train_main(['-opt', str(path), '--force_yml', 'train:total_iter=2'], root=ROOT) == 0
    before = tree(root)
    capsys.readouterr()
    assert train_main(['-opt', str(path), '--auto_resume', '--force_yml', 'network_g:num_feat=8'], root=ROOT) == 2
    err = capsys.readouterr().err
    assert (f"training state {root / 'training_states/2.state'} does not fit network_g (ELSR): "
            'layer1.weight: [6, 3, 3, 3] in the checkpoint, [8, 3, 3, 3] in the network') in err
    assert 'Traceback' not in err and tree(root) == before


# ----------------------------------------------------------------------------- case 3: a typo under datasets/sample
def test_3_a_typo_under_the_sample_folder_is_reported(tmp_path, sample_images):
    opt = options(tmp_path, 'typo')
    opt['datasets']['train']['dataroot_lq'] = 'datasets/sample/images/train/LR_bicubic_X2.lmbd'
    with pytest.raises(OptionsError) as err:
        check_options(load_options(write(tmp_path, opt), root=ROOT))
    assert (f"datasets.train.dataroot_lq: {SAMPLE}/images/train/LR_bicubic_X2.lmbd does not exist (the sample "
            f'builder of {SAMPLE}/images does not make train/LR_bicubic_X2.lmbd; did you mean '
            f'{SAMPLE}/images/train/LR_bicubic_X2.lmdb?)') in str(err.value)


def test_3_an_absent_sample_is_still_built_on_first_use(tmp_path):
    """Only what the builders make counts: every path they make (and no other) is recognised."""
    assert sample_builder_for(tmp_path / 'datasets/sample/video/REDS/train_sharp_bicubic/X4/011') is not None
    assert sample_builder_for(tmp_path / 'datasets/sample/video/REDS/train_sharp_bicubic/X3') is None
    assert sample_builder_for(tmp_path / 'datasets/sample/video/REDS/train_sharp/016') is None
    assert sample_builder_for(tmp_path / 'datasets/sample/video') is not None


@pytest.mark.parametrize('kind', ['images', 'video'])
def test_3_the_sample_layout_is_what_the_builder_makes(kind, sample_images, sample_video):
    built = {p.relative_to(SAMPLE / kind).as_posix() for p in (SAMPLE / kind).rglob('*') if p.is_file()}
    assert built == set(SAMPLE_FILES[kind]())


# ------------------------------------------------------------------- case 4: data errors, pretrain checkpoints
def replace_value(lmdb_dir: Path, key: str, new: Callable[[bytes], bytes]) -> bytes:
    """Store ``new(stored value)`` under ``key``; returns the value stored before."""
    env = lmdb.open(str(lmdb_dir), readonly=False, lock=False)
    with env.begin(write=True) as txn:
        previous = bytes(txn.get(key.encode()))
        txn.put(key.encode(), new(previous))
    env.close()
    return previous


def test_4_a_corrupt_lmdb_value_stops_with_one_line_after_saving_a_state(tmp_path, sample_images, capsys):
    data = tmp_path / 'data'
    for name in ('HR.lmdb', 'LR_bicubic_X2.lmdb'):
        shutil.copytree(sample_images / 'train' / name, data / name)
    opt = options(tmp_path, 'corrupt', total_iter=6)
    opt['datasets']['train'].update(dataroot_gt=str(data / 'HR.lmdb'), dataroot_lq=str(data / 'LR_bicubic_X2.lmdb'),
                                    num_worker_per_gpu=1)
    opt['logger']['save_checkpoint_freq'] = 100
    keys = sorted(line.split('.png')[0] for line in (data / 'HR.lmdb/meta_info.txt').read_text().splitlines())
    sampler = ShardedEpochSampler(len(keys), num_replicas=1, rank=0, shuffle=True, seed=5)
    sampler.set_epoch(0)
    bad_key = keys[list(sampler)[2]]  # the sample of iteration 3 (batch 1)
    original = replace_value(data / 'LR_bicubic_X2.lmdb', bad_key, lambda png: png[:100])  # a cut-off file
    path = write(tmp_path, opt)
    capsys.readouterr()
    assert train_main(['-opt', str(path)], root=ROOT) == 3
    out = capsys.readouterr()
    errors = [line for line in (out.out + out.err).splitlines() if 'data error' in line]
    assert len(errors) == 1 and 'Traceback' not in out.out + out.err
    assert (f"data error: datasets.train (PairedPatchDataset), sample {list(sampler)[2]}: Cannot decode the image "
            f"'{bad_key}' in the lmdb {data / 'LR_bicubic_X2.lmdb'}") in errors[0]
    assert 'state of iteration 2 saved' in errors[0]
    root = tmp_path / 'experiments' / 'corrupt'
    state = torch.load(root / 'training_states' / '2.state', weights_only=True)
    assert state['iter'] == 2 and state['micro_step'] == 2
    # fixed data: --auto_resume continues from the saved state
    close_lmdb_envs()  # the run's read-only handle (py-lmdb allows one per process)
    replace_value(data / 'LR_bicubic_X2.lmdb', bad_key, lambda _: original)
    assert train_main(['-opt', str(path), '--auto_resume'], root=ROOT) == 0
    assert history(root) == [1, 2, 3, 4, 5, 6]


def test_4_an_unreadable_frame_during_training_is_named(tmp_path, sample_images, capsys):
    """Disk backend: a frame removed after the dataset was built (checked at construction) is named by path."""
    data = tmp_path / 'frames'
    for name in ('HR', 'LR_bicubic/X2'):
        shutil.copytree(sample_images / 'train' / name, data / name)
    opt = options(tmp_path, 'frames', total_iter=6)
    opt['datasets']['train'].update(dataroot_gt=str(data / 'HR'), dataroot_lq=str(data / 'LR_bicubic/X2'),
                                    io_backend={'type': 'disk'})
    path = write(tmp_path, opt)
    victim = data / 'LR_bicubic/X2/rocket.png'
    victim.write_bytes(victim.read_bytes()[:64])  # truncated after the construction-time header check
    capsys.readouterr()
    assert train_main(['-opt', str(path)], root=ROOT) == 3
    out = capsys.readouterr()
    assert str(victim) in out.out and 'data error: datasets.train (PairedPatchDataset)' in out.out
    assert 'Traceback' not in out.out + out.err


def test_4_an_unreadable_validation_frame_stops_with_one_line_after_saving(tmp_path, sample_images, capsys):
    """A validation frame that cannot be read during a training run: one line naming the validation set and the
    file, the finished iteration saved, exit 3 — as for a training sample."""
    data = tmp_path / 'val'
    for name in ('HR', 'LR_bicubic/X2'):
        shutil.copytree(sample_images / 'val' / name, data / name)
    opt = options(tmp_path, 'valfault', total_iter=6)
    opt['datasets']['val'] = {'name': 'photos', 'type': 'PairedPatchDataset', 'dataroot_gt': str(data / 'HR'),
                              'dataroot_lq': str(data / 'LR_bicubic/X2'), 'io_backend': {'type': 'disk'}}
    opt['val'] = {'val_freq': 3, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2}}}
    opt['logger']['save_checkpoint_freq'] = 100
    path = write(tmp_path, opt)
    victim = data / 'LR_bicubic/X2/coffee_0.png'
    victim.write_bytes(victim.read_bytes()[:64])  # truncated after the construction-time header check
    capsys.readouterr()
    assert train_main(['-opt', str(path)], root=ROOT) == 3
    out = capsys.readouterr()
    assert 'data error: validation set photos (PairedPatchDataset)' in out.out and str(victim) in out.out
    assert 'state of iteration 3 saved' in out.out
    assert 'Traceback' not in out.out + out.err
    assert (tmp_path / 'experiments' / 'valfault' / 'training_states' / '3.state').is_file()


def elsr_checkpoint(tmp_path: Path, name: str, **net) -> Path:
    from vsrkit.models.base import build_network
    network = {'type': 'ELSR', 'scale': 2, 'num_feat': 6, **net}
    path = tmp_path / f'{name}.pth'
    torch.save({'params': build_network(network).state_dict(), 'network_g': network}, path)
    return path


def pretrain_problems(tmp_path: Path, pretrain: Path, **path_options) -> str:
    opt = options(tmp_path, 'pretrain')
    opt['path'].update(pretrain_network_g=str(pretrain), **path_options)
    with pytest.raises(OptionsError) as err:
        check_options(load_options(write(tmp_path, opt), root=ROOT))
    return str(err.value)


def test_4_a_pretrain_of_another_scale_lists_every_mismatch(tmp_path, sample_images):
    message = pretrain_problems(tmp_path, elsr_checkpoint(tmp_path, 'x4', scale=4))
    assert ('does not fit network_g (ELSR, strict_load_g: true): layer5.weight: [48, 6, 3, 3] in the checkpoint, '
            '[12, 6, 3, 3] in the network; layer5.bias: [48] in the checkpoint, [12] in the network') in message
    fits = elsr_checkpoint(tmp_path, 'x2')
    opt = options(tmp_path, 'pretrain')
    opt['path']['pretrain_network_g'] = str(fits)
    check_options(load_options(write(tmp_path, opt), root=ROOT))  # the right one passes
    opt['path'].update(pretrain_network_g=str(tmp_path / 'x4.pth'), strict_load_g=False)
    check_options(load_options(write(tmp_path, opt), root=ROOT))  # non-strict loads what fits (BasicSR's rule)


def test_4_a_pretrain_of_another_architecture_lists_every_mismatch(tmp_path, sample_images):
    from vsrkit.models.base import build_network
    vdsr = tmp_path / 'vdsr.pth'
    given = build_network({'type': 'VDSR', 'num_layers': 2, 'num_channels': 8}).state_dict()
    torch.save({'params': given}, vdsr)
    message = pretrain_problems(tmp_path, vdsr)
    expected = build_network({'type': 'ELSR', 'scale': 2, 'num_feat': 6}).state_dict()
    listed = [f'missing {k} {list(v.shape)}' for k, v in expected.items()] + \
        [f'unexpected {k} {list(v.shape)}' for k, v in given.items()]
    assert '; '.join(listed) in message  # every key of both, in one list


def test_4_a_pretrain_path_that_does_not_exist_is_reported_up_front(tmp_path, sample_images, capsys):
    opt = options(tmp_path, 'nopretrain')
    opt['path']['pretrain_network_g'] = str(tmp_path / 'missing.pth')
    capsys.readouterr()
    assert train_main(['-opt', str(write(tmp_path, opt))], root=ROOT) == 2
    assert f"path.pretrain_network_g: {tmp_path / 'missing.pth'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / 'experiments' / 'nopretrain').exists()


# ---------------------------------------------------------------------------------------- case 5: --overwrite
def script(name: str):
    """A command-line script of scripts/ as a module (its main runs in this process: no interpreter start)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_5_upscale_video_refuses_an_existing_output_before_any_work(tmp_path, capsys):
    from vsrkit.inference_scripts.upscale_video import main as upscale
    output = tmp_path / 'out.mp4'
    output.write_bytes(b"the user's video")
    capsys.readouterr()
    assert upscale([str(tmp_path / 'in.mp4'), str(output), '--model', str(tmp_path / 'no.pth')]) == 1
    assert capsys.readouterr().err.strip() == f'error: output {output} exists; pass --overwrite to replace it'
    assert output.read_bytes() == b"the user's video"
    assert upscale([str(tmp_path / 'in.mp4'), str(output), '--model', str(tmp_path / 'no.pth'), '--overwrite']) == 1
    assert 'exists;' not in capsys.readouterr().err  # it went on (to the missing input)


def test_5_scripts_refuse_existing_outputs(tmp_path, sample_images, sample_video, capsys):
    # create_lmdb: every output is checked before the first is written
    reds = tmp_path / 'REDS'
    shutil.copytree(sample_video / 'REDS/train_sharp/000', reds / 'train_sharp/000')
    shutil.copytree(sample_video / 'REDS/train_sharp_bicubic/X4/000', reds / 'train_sharp_bicubic/X4/000')
    (reds / 'train_sharp_bicubic_with_val.lmdb').mkdir()
    capsys.readouterr()
    assert script('create_lmdb').main(['--dataset', 'reds', '--input', str(reds)]) == 1
    assert (f"error: {reds / 'train_sharp_bicubic_with_val.lmdb'} already exist(s); pass --overwrite"
            in capsys.readouterr().err)
    assert not (reds / 'train_sharp_with_val.lmdb').exists()
    # make_bicubic_lr
    lr = tmp_path / 'LR'
    lr.mkdir()
    make_lr = script('make_bicubic_lr').main
    assert make_lr([str(sample_images / 'val/HR'), str(lr), '--scale', '2']) == 1
    assert f'{lr} exists; pass --overwrite' in capsys.readouterr().err and not any(lr.iterdir())
    assert make_lr([str(sample_images / 'val/HR'), str(lr), '--scale', '2', '--overwrite']) == 0
    assert len(list(lr.glob('*.png'))) == 4
    # convert_checkpoint
    src, dst = elsr_checkpoint(tmp_path, 'src'), tmp_path / 'dst.pth'
    dst.write_bytes(b'keep')
    assert script('convert_checkpoint').main([str(src), str(dst)]) == 1
    assert f'{dst} exists' in capsys.readouterr().err and dst.read_bytes() == b'keep'


def test_5_benchmark_results_are_not_replaced(tmp_path, sample_video, capsys):
    from vsrkit.evaluation.video_protocol import benchmark_main
    from vsrkit.inference_scripts.reds4 import REDS4
    out = tmp_path / 'results'
    out.mkdir()
    (out / 'results.csv').write_text('earlier')
    capsys.readouterr()
    code = benchmark_main(REDS4, ['--out-dir', str(out), '--no-progress', '--gt',
                                  str(sample_video / 'REDS/train_sharp'), '--lq',
                                  str(sample_video / 'REDS/train_sharp_bicubic/X4'), '--meta-info',
                                  str(sample_video / 'REDS/meta_info_REDS4_test_GT.txt')])
    assert code == 1 and f"{out / 'results.csv'} exist(s); pass --overwrite" in capsys.readouterr().err
    assert (out / 'results.csv').read_text() == 'earlier'


def test_5_spatiotemporal_refuses_before_loading_anything(tmp_path, capsys):
    from vsrkit.inference_scripts.spatiotemporal import main as fuse
    out = tmp_path / 'frames'
    out.mkdir()
    capsys.readouterr()
    assert fuse([str(tmp_path / 'in'), str(out), '--colorizer', str(tmp_path / 'c.pth'), '--interpolator',
                 str(tmp_path / 'i.pth')]) == 1
    assert capsys.readouterr().err.strip() == f'error: {out} exists; pass --overwrite to replace it'


# ------------------------------------------------------------------------------------------- case 7: the umask
@pytest.mark.parametrize('umask', [0o022, 0o002, 0o077])
def test_7_checkpoints_honour_the_umask_as_torch_save_does(tmp_path, umask):
    previous = os.umask(umask)
    try:
        torch.save({'x': torch.zeros(1)}, tmp_path / 'reference.pth')
        atomic_save({'x': torch.zeros(1)}, tmp_path / 'atomic.pth')
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / 'atomic.pth').stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / 'reference.pth').stat().st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------------------------- case 8: a stop through torchrun
@pytest.mark.parametrize('signum, to_group', [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=['SIGTERM to the launcher', 'Ctrl-C: SIGINT to every process'])
def test_8_a_stop_through_torchrun_ends_in_one_line_per_process_with_a_resumable_state(tmp_path, sample_images, signum,
                                                                                        to_group):
    opt = write(tmp_path, options(tmp_path, 'torchrun', total_iter=1_000_000))
    root = tmp_path / 'experiments' / 'torchrun'
    launcher = subprocess.Popen(['bash', str(ROOT / 'dist_train.sh'), '2', str(opt)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=PYTHON_ENV, start_new_session=True)
    try:
        wait_for(lambda: (root / 'train_log.jsonl').is_file() and len(history(root)) >= 2, 300, launcher)
    finally:
        if to_group:  # as a terminal's Ctrl-C: the launcher and the training processes, each directly
            os.killpg(launcher.pid, signum)
        else:
            launcher.send_signal(signum)
        out, _ = launcher.communicate(timeout=180)
    assert launcher.returncode == 128 + signum, out[-3000:]
    assert 'Traceback' not in out and 'SignalException' not in out, out[-3000:]
    stopped = [line for line in out.splitlines() if 'Stopped at iteration' in line]
    assert sorted(line.split('rank ')[1][0] for line in stopped) == ['0', '1'], out[-3000:]
    assert out.strip().splitlines()[-1].startswith(f'torchrun: {signal.Signals(signum).name} received and passed')
    last = history(root)[-1]
    assert f'Stopped at iteration {last};' in stopped[0]
    state = torch.load(root / 'training_states' / f'{last}.state', weights_only=True)
    assert state['iter'] == last and state['world_size'] == 2


def test_dist_train_refuses_a_batch_larger_than_each_process_share(tmp_path, sample_images):
    """dist_train.sh's up-front check counts the processes it will start: a batch that fits the whole training
    set but not one process's half of it is refused before any process starts or any folder is made."""
    from vsrkit.data import build_dataset

    opt = options(tmp_path, 'share')
    train = {**opt['datasets']['train'], 'phase': 'train', 'scale': 2,
             **{k: str(ROOT / opt['datasets']['train'][k]) for k in ('dataroot_gt', 'dataroot_lq')}}
    samples = len(build_dataset(train))
    batch = (samples + 1) // 2 + 1  # one more than a process's share (the sampler pads shares to equal size)
    assert batch <= samples
    opt['datasets']['train']['batch_size_per_gpu'] = batch
    path = write(tmp_path, opt)
    run = subprocess.run(['bash', str(ROOT / 'dist_train.sh'), '2', str(path)], capture_output=True, text=True,
                         env=PYTHON_ENV, timeout=240)
    assert run.returncode == 2, run.stderr
    assert 'batch_size_per_gpu' in run.stdout + run.stderr
    assert 'Traceback' not in run.stderr
    assert 'torchrun' not in run.stdout + run.stderr and 'distributed' not in run.stderr  # never started
    assert not (tmp_path / 'experiments').exists()
