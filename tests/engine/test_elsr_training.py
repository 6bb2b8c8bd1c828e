"""ELSR training: the three-stage recipe's options, a real training step, and a chain that really chains
(the original parses --weights and never loads them; here stage N+1 starts from stage N's final weights)."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
import yaml

from vsrkit.models.image_sr_model import ImageSRModel
from vsrkit.utils.checkpoint import load_file
from vsrkit.engine.options import load_options
from vsrkit.engine.train_loop import main as train_main

ROOT = Path(__file__).resolve().parents[2]
STAGES = ['elsr_x2_stage1', 'elsr_x4_stage2', 'elsr_x4_stage3']


def options_file(name: str) -> Path:
    return ROOT / 'options' / f'{name}.yml'


def train(name: str, folder: Path, *extra: str) -> Path:
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    code = train_main(['-opt', str(options_file(name)), '--force_yml', 'train:total_iter=2',
                       f'path:experiments_root={folder}', 'logger:use_tb_logger=false', 'logger:print_freq=1',
                       'datasets:train:batch_size_per_gpu=4', 'val:metrics={}', *extra], root=ROOT)
    assert code == 0
    # in-process training hands the signal handlers back (left installed, forked workers ignored SIGTERM: CI hung)
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers
    return folder / 'models' / 'net_g_latest.pth'


def build_model(name: str, *overrides: str) -> ImageSRModel:
    opt = load_options(options_file(name), root=ROOT, overrides=overrides)
    opt['device'] = 'cpu'
    return ImageSRModel(opt)


@pytest.mark.parametrize('suffix', ['', '_sample'])
def test_recipe_options(suffix):
    """x2 L1 lr 0.01 -> x4 L1 lr 0.05 -> x4 MSE lr 5e-3 (README), each stage pointing at the previous one."""
    opts = [yaml.safe_load(options_file(s + suffix).read_text()) for s in STAGES]
    assert [o['scale'] for o in opts] == [2, 4, 4]
    assert [o['network_g']['scale'] for o in opts] == [2, 4, 4]
    assert [o['train']['pixel_opt']['type'] for o in opts] == ['L1Loss', 'L1Loss', 'MSELoss']
    assert [float(o['train']['optim_g']['lr']) for o in opts] == [1e-2, 5e-2, 5e-3]
    assert opts[0]['path']['pretrain_network_g'] is None
    for previous, stage in zip(STAGES, opts[1:]):
        assert stage['path']['pretrain_network_g'] == f'experiments/{previous}{suffix}/models/net_g_latest.pth'
    assert [o['path']['strict_load_g'] for o in opts] == [True, False, True]


def test_chain_really_chains(tmp_path):
    stage1 = train('elsr_x2_stage1_sample', tmp_path / 's1')
    final1 = load_file(stage1)['params']
    assert final1['layer5.weight'].shape == (12, 6, 3, 3)

    # Stage 2 (x4): every tensor but layer5 starts from stage 1's final weights; layer5 changes shape.
    model2 = build_model('elsr_x4_stage2_sample', f'path:pretrain_network_g={stage1}')
    start2 = model2.net_g.state_dict()
    shared = [k for k in final1 if start2[k].shape == final1[k].shape]
    assert sorted(set(final1) - set(shared)) == ['layer5.bias', 'layer5.weight']
    assert len(shared) == len(final1) - 2
    for key in shared:
        assert torch.equal(start2[key], final1[key]), key
    # Without the chain (the original's behaviour) the start would be a fresh init: the check above would fail.
    fresh = build_model('elsr_x4_stage2_sample', 'path:pretrain_network_g=~').net_g.state_dict()
    assert not torch.equal(fresh['layer1.weight'], final1['layer1.weight'])

    # Stage 2 trains, stage 3 (same shapes, strict) starts from all of stage 2's final weights.
    stage2 = train('elsr_x4_stage2_sample', tmp_path / 's2', f'path:pretrain_network_g={stage1}')
    final2 = load_file(stage2)['params']
    assert not torch.equal(final2['layer1.weight'], final1['layer1.weight'])  # stage 2 trained
    start3 = build_model('elsr_x4_stage3_sample', f'path:pretrain_network_g={stage2}').net_g.state_dict()
    assert start3.keys() == final2.keys()
    for key in final2:
        assert torch.equal(start3[key], final2[key]), key


def test_training_step_is_l1_on_frames():
    """One optimizer step of stage 1 on real sample frames: the logged loss is the L1 of the network's output."""
    from vsrkit.data.paired_patch_dataset import PairedPatchDataset

    opt = load_options(options_file('elsr_x2_stage1_sample'), root=ROOT)
    dataset = PairedPatchDataset(dict(opt['datasets']['train']))
    batch = torch.utils.data.default_collate([dataset[i] for i in (0, 40, 80, 120)])
    assert batch['lq'].shape == (4, 3, 32, 32) and batch['gt'].shape == (4, 3, 64, 64)
    model = build_model('elsr_x2_stage1_sample')
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    with torch.no_grad():
        expected = (model.net_g(batch['lq']) - batch['gt']).abs().mean().item()
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert model.get_current_log()['l_pixel'] == pytest.approx(expected, rel=1e-5)
    after = model.net_g.state_dict()
    # Adam's first step moves every weight with a non-zero gradient by ~lr.
    step = (after['layer1.weight'] - before['layer1.weight']).abs()
    assert step.max().item() == pytest.approx(1e-2, rel=1e-3)
