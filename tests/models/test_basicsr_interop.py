"""BasicSR interop both ways, on CPU.

basicsr's own loop (a foreign project's train.py calling ``basicsr.train.train_pipeline``, in subprocesses) drives
vsrkit's ImageSRModel (LR schedule per optimizer step as vsrkit's loop, losses in every log line, validation
logged with best values, no ``-1`` files, tensorboard), RecurrentVSRModel on real clips, and basicsr's SRModel
with vsrkit's arch/dataset/loss. basicsr's VideoRecurrentModel validates with vsrkit's clip dataset on CPU (the
compatibility patch) and vsrkit's RecurrentVSRModel with basicsr's VideoRecurrentTestDataset, to the same
numbers. vsrkit's loop drives basicsr's SRModel and refuses, before anything starts, what it cannot drive.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import vsrkit.data  # noqa: F401  (registers the datasets)
import vsrkit.models  # noqa: F401  (registers the model types)
from vsrkit.engine.option_checks import check_options, check_training_set_fits
from vsrkit.engine.options import load_options
from vsrkit.engine.train_loop import main
from vsrkit.models.basicsr_driver import build_driven_model
from vsrkit.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY
from vsrkit.utils.signature import OptionsError

FOREIGN_TRAIN_PY = '''\
"""A foreign BasicSR project: vsrkit's types registered, basicsr's own training loop."""
import os.path as osp

import vsrkit.archs, vsrkit.data, vsrkit.losses, vsrkit.models  # noqa: E401,F401  (registers vsrkit's types)
from basicsr.train import train_pipeline

if __name__ == '__main__':
    train_pipeline(osp.dirname(osp.abspath(__file__)))
'''
TINY_VIT = {'type': 'ViTSR', 'embed_dim': 16, 'num_heads': 2, 'depth': 1, 'mlp_dim': 32, 'dropout': 0.0, 'scale': 2}
TINY_MIAVSR = {'type': 'MIAVSR', 'mid_channels': 8, 'embed_dim': 8, 'depths': [1], 'num_heads': [1],
               'drop_path_rate': 0.0}
PSNR = {'psnr': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': False}}
LOG_LINE = re.compile(r'iter:\s*([\d,]+), lr:\(([^)]*)\)\](.*)$')


@pytest.fixture(scope='module')
def photo_pairs(tmp_path_factory, write_photo_pairs) -> Path:
    """HR crops of real photos (skimage) and their MATLAB-bicubic x2 LR, as BasicSR-style folders."""
    from skimage import data

    crops = {'train': [(data.astronaut(), 100, 120), (data.rocket(), 150, 300), (data.coffee(), 120, 200)],
             'val': [(data.chelsea(), 80, 160)]}
    return write_photo_pairs(tmp_path_factory.mktemp('pairs'), crops, 32)


def image_options(name: str, pairs: Path, model_type: str, network: dict, train: dict) -> dict:
    """Options in basicsr's layout (everything its option parser and loop read), vsrkit's dataset."""
    paired = {'type': 'PairedPatchDataset', 'io_backend': {'type': 'disk'}}
    return {'name': name, 'model_type': model_type, 'scale': 2, 'num_gpu': 0, 'manual_seed': 0,
            'datasets': {'train': {**paired, 'name': 'photos', 'dataroot_gt': str(pairs / 'train/HR'),
                                   'dataroot_lq': str(pairs / 'train/LR'), 'gt_size': 16, 'use_hflip': True,
                                   'use_rot': True, 'batch_size_per_gpu': 2, 'num_worker_per_gpu': 0,
                                   'dataset_enlarge_ratio': 4},  # basicsr's loop: enough batches per epoch
                         'val': {**paired, 'name': 'photos_val', 'dataroot_gt': str(pairs / 'val/HR'),
                                 'dataroot_lq': str(pairs / 'val/LR')}},
            'network_g': network, 'path': {},
            'train': {'total_iter': 8, **train},
            'val': {'val_freq': 4, 'save_img': False, 'metrics': PSNR},
            'logger': {'print_freq': 1, 'save_checkpoint_freq': 4, 'use_tb_logger': True}}


VIT_TRAIN = {'optim_g': {'type': 'AdamW', 'lr': 5e-4, 'weight_decay': 1e-3},
             'scheduler': {'type': 'CosineAnnealingLR', 'T_max': 6, 'eta_min': 1e-5}, 'warmup_iter': 2,
             'accumulate_grad_batches': 2, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}}


def video_options(clips: Path, val_clips: Path) -> dict:
    return {'name': 'rvsr', 'model_type': 'RecurrentVSRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
            'datasets': {'train': {'name': 'clips', 'type': 'REDSClipDataset', 'dataroot_gt': str(clips / 'gt'),
                                   'dataroot_lq': str(clips / 'lq'), 'meta_info_file': str(clips / 'meta.txt'),
                                   'val_partition': [], 'io_backend': {'type': 'disk'}, 'num_frame': 3,
                                   'gt_size': 64, 'use_hflip': True, 'use_rot': True, 'batch_size_per_gpu': 1,
                                   'num_worker_per_gpu': 0},
                         'val': {'name': 'clips_val', 'type': 'VideoClipTestDataset',
                                 'dataroot_gt': str(val_clips / 'gt'), 'dataroot_lq': str(val_clips / 'lq'),
                                 'meta_info_file': str(val_clips / 'meta.txt'), 'io_backend': {'type': 'disk'}}},
            'network_g': dict(TINY_MIAVSR), 'path': {},
            'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': 2,
                      'pixel_opt': {'type': 'CharbonnierLoss'},
                      'sparsity_opt': {'type': 'SparsityLoss', 'loss_weight': 1e-4}},
            'val': {'val_freq': 2, 'save_img': False, 'metrics': {**PSNR, 'psnr': {**PSNR['psnr'], 'crop_border': 0}}},
            'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False}}


@pytest.fixture(scope='module')
def foreign_runs(tmp_path_factory, photo_pairs, sample_reds_clips) -> dict[str, Path]:
    """A foreign project with three option files, each trained by basicsr's loop in its own subprocess (all
    three at once); returns {run name: its experiment folder} after checking that each run succeeded."""
    project = tmp_path_factory.mktemp('foreign')
    (project / 'train.py').write_text(FOREIGN_TRAIN_PY)
    (project / 'options').mkdir()
    runs = {
        'vit': image_options('vit', photo_pairs, 'ImageSRModel', dict(TINY_VIT), VIT_TRAIN),
        'srmodel': image_options('srmodel', photo_pairs, 'SRModel', {'type': 'ELSR', 'scale': 2, 'num_feat': 4},
                                 {'optim_g': {'type': 'Adam', 'lr': 1e-3},
                                  'scheduler': {'type': 'MultiStepLR', 'milestones': [4], 'gamma': 0.5},
                                  'pixel_opt': {'type': 'SSIMLoss', 'loss_weight': 1.0}}),
        'rvsr': video_options(sample_reds_clips(('000', '011'), 4), sample_reds_clips(('000',), 4)),
    }
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'OMP_NUM_THREADS': '1'}
    processes = {}
    for name, opt in runs.items():
        (project / 'options' / f'{name}.yml').write_text(yaml.safe_dump(opt))
        processes[name] = subprocess.Popen([sys.executable, 'train.py', '-opt', f'options/{name}.yml'], cwd=project,
                                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {name: process.communicate(timeout=600)[0] for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, f'{name}:\n{outputs[name][-3000:]}'
        assert 'Detected call of `lr_scheduler.step()` before `optimizer.step()`' not in outputs[name]
    return {name: project / 'experiments' / name for name in runs}


def log_lines(experiment: Path) -> list[tuple[int, list[float], dict[str, float]]]:
    """basicsr's iteration log lines: (iter, lrs, {loss: value})."""
    (log,) = experiment.glob('train_*.log')
    rows = []
    for line in log.read_text().splitlines():
        match = LOG_LINE.search(line)
        if match:
            values = dict(re.findall(r'(\w+): ([-+.\deE]+)', match.group(3).split(']')[-1]))
            lrs = [float(v) for v in match.group(2).split(',') if v]
            rows.append((int(match.group(1).replace(',', '')), lrs, {k: float(v) for k, v in values.items()}))
    return rows


def test_imagesr_model_under_basicsr_loop_schedules_per_optimizer_step(foreign_runs, photo_pairs, tmp_path):
    experiment = foreign_runs['vit']
    rows = log_lines(experiment)
    assert [r[0] for r in rows] == list(range(1, 9))  # basicsr's iterations are micro-batches: 8 = 4 steps
    assert all('l_pixel' in losses for _, _, losses in rows)  # the first line too (one micro-batch in)
    # vsrkit's loop, same options, 4 iterations (optimizer steps): its LR after step k is the LR of step k+1
    path = tmp_path / 'vit.yml'
    path.write_text(yaml.safe_dump(image_options('vit', photo_pairs, 'ImageSRModel', dict(TINY_VIT), VIT_TRAIN)))
    assert main(['-opt', str(path), '--force_yml', 'train:total_iter=4'], root=tmp_path) == 0
    ours = [r['lr'][0] for r in map(json.loads, (tmp_path / 'experiments/vit/train_log.jsonl').read_text().splitlines())]
    start = 5e-4 / (2 + 1)  # LinearLR warm-up's first factor
    expected = [start, start] + [lr for lr in ours[:3] for _ in range(2)]  # each step's LR for its 2 micro-batches
    assert [r[1][0] for r in rows] == pytest.approx(expected, rel=2e-3)  # the log prints 4 digits
    log = next(experiment.glob('train_*.log')).read_text()
    assert re.search(r'Validation photos_val\n\t # psnr: [\d.]+\tBest: [\d.]+ @ 4 iter', log)
    assert re.search(r'Validation photos_val\n\t # psnr: [\d.]+\tBest: [\d.]+ @ \d+ iter', log.split('End of training')[1])
    models = sorted(p.name for p in (experiment / 'models').iterdir())
    assert models == ['net_g_4.pth', 'net_g_8.pth', 'net_g_latest.pth']  # save(-1) = latest, no net_g_-1.pth
    assert sorted(p.name for p in (experiment / 'training_states').iterdir()) == ['4.state', '8.state']
    state = torch.load(experiment / 'training_states/8.state', weights_only=True)
    assert state['micro_step'] == 8 and state['scheduled_steps'] == 3  # the 4th step's schedule step is pending
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(experiment.parent.parent / 'tb_logger' / 'vit')).Reload()
    assert {'losses/l_pixel', 'metrics/photos_val/psnr'} <= set(events.Tags()['scalars'])


def test_recurrent_vsr_model_under_basicsr_loop(foreign_runs):
    experiment = foreign_runs['rvsr']
    rows = log_lines(experiment)
    assert [r[0] for r in rows] == [1, 2] and all({'l_pixel', 'l_sparsity'} <= set(r[2]) for r in rows)
    log = next(experiment.glob('train_*.log')).read_text()
    found = re.findall(r'Validation clips_val\n\t # psnr: ([\d.]+)\tBest: ([\d.]+) @ (\d+) iter', log)
    assert len(found) == 2 and found[0][2] == '2'  # at iteration 2 and after training: the same weights
    assert found[0][0] == found[1][0] == found[1][1] and 5 < float(found[0][0]) < 60
    assert sorted(p.name for p in (experiment / 'models').iterdir()) == ['net_g_2.pth', 'net_g_latest.pth']


def test_basicsr_srmodel_with_vsrkit_arch_dataset_loss(foreign_runs):
    experiment = foreign_runs['srmodel']
    rows = log_lines(experiment)
    assert [r[0] for r in rows] == list(range(1, 9)) and all('l_pix' in r[2] for r in rows)
    assert [r[1][0] for r in rows] == pytest.approx([1e-3] * 4 + [5e-4] * 4)  # basicsr's MultiStepRestartLR
    log = next(experiment.glob('train_*.log')).read_text()
    assert re.search(r'Validation photos_val\n\t # psnr: [\d.]+\tBest: [\d.]+ @ [48] iter', log)
    assert (experiment / 'models' / 'net_g_latest.pth').is_file()


def clip_dataset(kind: str, clips: Path) -> torch.utils.data.Dataset:
    common = {'dataroot_gt': str(clips / 'gt'), 'dataroot_lq': str(clips / 'lq'), 'io_backend': {'type': 'disk'},
              'meta_info_file': str(clips / 'meta.txt'), 'phase': 'val'}
    if kind == 'basicsr':  # it accepts only these names, the disk backend and cached clips
        return DATASET_REGISTRY.get('VideoRecurrentTestDataset')({**common, 'name': 'REDS4', 'cache_data': True,
                                                                  'num_frame': 3})
    return DATASET_REGISTRY.get('VideoClipTestDataset')({**common, 'name': 'REDS4'})


def test_video_validation_across_libraries_on_cpu(sample_reds_clips, tmp_path):
    """basicsr's VideoRecurrentModel scores vsrkit's clip dataset on CPU (its metric tensors moved off 'cuda'),
    vsrkit's RecurrentVSRModel scores basicsr's VideoRecurrentTestDataset: both to the same per-clip PSNR."""
    clips = sample_reds_clips(('000',), 3)
    metrics = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}
    torch.manual_seed(0)
    theirs = MODEL_REGISTRY.get('VideoRecurrentModel')({
        'name': 'x', 'is_train': False, 'dist': False, 'rank': 0, 'world_size': 1, 'num_gpu': 0, 'scale': 4,
        'network_g': dict(TINY_MIAVSR), 'path': {}, 'val': {'metrics': metrics}})
    assert theirs.device.type == 'cpu'
    ours = MODEL_REGISTRY.get('RecurrentVSRModel')({'is_train': False, 'device': 'cpu', 'scale': 4,
                                                   'network_g': dict(TINY_MIAVSR), 'path': {},
                                                   'val': {'metrics': metrics}})
    ours.net_g.load_state_dict(theirs.net_g.state_dict())
    theirs.validation(torch.utils.data.DataLoader(clip_dataset('vsrkit', clips)), 0, None)
    per_clip = {folder: float(t[:, 0].mean()) for folder, t in theirs.metric_results.items()}
    assert all(t.device.type == 'cpu' and t.shape == (3, 1) for t in theirs.metric_results.values())
    for kind in ('basicsr', 'vsrkit'):
        averages = ours.validation(clip_dataset(kind, clips), 0)
        # basicsr sums the per-frame values in float32 tensors: agreement to float32 precision
        assert {r['name']: r['psnr'] for r in ours.last_validation} == pytest.approx(per_clip, abs=1e-4)
        assert averages['psnr'] == pytest.approx(theirs.best_metric_results['REDS4']['psnr']['val'], abs=1e-4)
    assert ours.best_metric_results['REDS4']['psnr']['iter'] == 0


@pytest.mark.parametrize('model_type', ['SRModel', 'ESRGANModel'])
def test_vsrkit_loop_drives_basicsr_image_models(photo_pairs, tmp_path, model_type):
    """basicsr's types on vsrkit's loop (CPU here): basicsr's LR semantics, its checkpoints, pruned states."""
    opt = image_options('sr', photo_pairs, model_type, {'type': 'ELSR', 'scale': 2, 'num_feat': 4},
                        {'optim_g': {'type': 'Adam', 'lr': 1e-3},
                         'scheduler': {'type': 'MultiStepLR', 'milestones': [2], 'gamma': 0.5},
                         'pixel_opt': {'type': 'L1Loss'}, 'total_iter': 4})
    if model_type == 'ESRGANModel':  # a discriminator that takes 16-pixel patches, a loss that downloads nothing
        opt['network_d'] = {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 4}
        opt['train'].update(optim_d={'type': 'Adam', 'lr': 1e-3},
                            gan_opt={'type': 'GANLoss', 'gan_type': 'vanilla', 'loss_weight': 0.1})
    opt['logger'].update(keep_training_states=1, save_checkpoint_freq=2)
    path = tmp_path / 'sr.yml'
    path.write_text(yaml.safe_dump(opt))
    assert main(['-opt', str(path)], root=tmp_path) == 0
    experiment = tmp_path / 'experiments' / 'sr'
    logs = [json.loads(line) for line in (experiment / 'train_log.jsonl').read_text().splitlines()]
    assert [r['lr'][0] for r in logs] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])  # as under basicsr's loop
    pixel = 'l_pix' if model_type == 'SRModel' else 'l_g_pix'
    assert all(r[pixel] > 0 for r in logs) and (model_type == 'SRModel' or all('l_d_real' in r for r in logs))
    assert sorted(p.name for p in (experiment / 'training_states').iterdir()) == ['4.state']
    saved = torch.load(experiment / 'models' / 'net_g_4.pth', weights_only=True)
    assert set(saved) == {'params'}  # basicsr's own save
    assert (model_type == 'SRModel') != (experiment / 'models' / 'net_d_4.pth').is_file()


def test_driven_basicsr_checkpoints_are_written_atomically(photo_pairs, tmp_path, monkeypatch):
    """basicsr's saves torch.save onto the final path; a write that dies half-way (a full disk: basicsr logs it and
    goes on) must leave the earlier checkpoint and state of that name whole, and no temporary file behind."""
    opt = image_options('atomic', photo_pairs, 'SRModel', {'type': 'ELSR', 'scale': 2, 'num_feat': 4},
                        {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'pixel_opt': {'type': 'L1Loss'},
                         'scheduler': {'type': 'MultiStepLR', 'milestones': [2], 'gamma': 0.5}})
    path = tmp_path / 'atomic.yml'
    path.write_text(yaml.safe_dump(opt))
    opt = load_options(path, root=tmp_path)
    folders = [Path(opt['path'][key]) for key in ('models', 'training_states')]
    for folder in folders:
        folder.mkdir(parents=True)
    driver = build_driven_model(opt, torch.device('cpu'))
    driver.save(0, 2)
    written = {p: p.read_bytes() for folder in folders for p in folder.iterdir()}
    assert sorted(p.name for p in written) == ['2.state', 'net_g_2.pth']

    def dies_half_way(obj, f, *args, **kwargs):
        handle = open(f, 'wb') if isinstance(f, (str, os.PathLike)) else f
        handle.write(b'half a checkpoint')
        handle.flush()
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', dies_half_way)
    driver.save(0, 2)
    monkeypatch.undo()
    assert {p: p.read_bytes() for folder in folders for p in folder.iterdir()} == written


def test_vsrkit_loop_refuses_up_front(photo_pairs, tmp_path, capsys):
    def problems(model_type: str, **train) -> str:
        opt = image_options('x', photo_pairs, model_type, {'type': 'ELSR', 'scale': 2},
                            {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'pixel_opt': {'type': 'L1Loss'},
                             'scheduler': {'type': 'MultiStepLR', 'milestones': [2]}, **train})
        opt['is_train'] = True
        with pytest.raises(OptionsError) as err:
            check_options(opt, sample_builder_for=lambda path: None)
        return str(err.value)

    assert ("model_type: basicsr's VideoRecurrentModel cannot be driven by vsrkit's loop "
            "(it drives SRModel, SwinIRModel, SRGANModel, ESRGANModel); use vsrkit's RecurrentVSRModel"
            in problems('VideoRecurrentModel'))
    message = problems('SRModel', optim_g={'type': 'AdamW', 'lr': 1e-3}, accumulate_grad_batches=2)
    assert "train.optim_g.type: basicsr's SRModel builds only Adam, got AdamW; vsrkit's ImageSRModel has it" in message
    assert "train.accumulate_grad_batches: basicsr's SRModel has no gradient accumulation" in message
    assert 'train.perceptual_opt: PerceptualLoss downloads VGG19 weights' in problems(
        'SRModel', perceptual_opt={'type': 'PerceptualLoss', 'layer_weights': {'conv5_4': 1}})
    opt = image_options('x', photo_pairs, 'ImageSRModel', dict(TINY_VIT), VIT_TRAIN)
    opt['logger']['keep_training_states'] = 0
    with pytest.raises(OptionsError, match=r'logger.keep_training_states: 0 is not a positive integer'):
        check_options(opt, sample_builder_for=lambda path: None)
    # a batch larger than the training set: refused before any process, folder or file exists
    opt = image_options('big', photo_pairs, 'ImageSRModel', dict(TINY_VIT), VIT_TRAIN)
    opt['datasets']['train'].update(batch_size_per_gpu=4, dataset_enlarge_ratio=1)
    path = tmp_path / 'big.yml'
    path.write_text(yaml.safe_dump(opt))
    with pytest.raises(OptionsError, match=r'batch_size_per_gpu: 4 exceeds the 2 samples each of 2 process'):
        check_training_set_fits(load_options(path, root=tmp_path), world_size=2)
    opt['datasets']['train']['batch_size_per_gpu'] = 7
    path.write_text(yaml.safe_dump(opt))
    assert main(['-opt', str(path), '--check-only'], root=tmp_path) == 2
    assert 'batch_size_per_gpu: 7 exceeds the 3 samples each of 1 process(es)' in capsys.readouterr().err
    assert main(['-opt', str(path)], root=tmp_path) == 2
    assert not (tmp_path / 'experiments').exists()


def test_prepare_sample_data_without_arguments(tmp_path, capsys):
    """README's command with no argument (argparse rejected it on Python 3.10/3.11): every kind, existing kept."""
    import importlib.util

    from vsrkit.data.sample_data import SAMPLE_BUILDERS

    script_path = Path(__file__).resolve().parents[2] / 'scripts' / 'prepare_sample_data.py'
    spec = importlib.util.spec_from_file_location('prepare', script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for kind in SAMPLE_BUILDERS:
        (tmp_path / kind).mkdir()
    script.main(['--root', str(tmp_path)])
    assert capsys.readouterr().out.splitlines() == [f'{tmp_path / k}: already present' for k in sorted(SAMPLE_BUILDERS)]
    with pytest.raises(SystemExit):
        script.main(['--root', str(tmp_path), 'nonsense'])
    assert "unknown sample set(s) ['nonsense']" in capsys.readouterr().err
