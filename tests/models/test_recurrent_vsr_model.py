"""RecurrentVSRModel: a training run through the loop on real sample clips, the sparsity loss, fix_flow and
flow_lr_mul, and per-clip validation rows (chunked datasets merged per frame) against basicsr's metrics."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import vsrkit.data  # noqa: F401  (registers the datasets)
import vsrkit.models  # noqa: F401  (registers the model types)
from basicsr.losses.basic_loss import CharbonnierLoss
from basicsr.metrics import calculate_psnr
from vsrkit.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY
from vsrkit.engine.train_loop import main
from vsrkit.utils.color import bicubic_frame
from vsrkit.evaluation.video_protocol import owned_frames

ROOT = Path(__file__).resolve().parents[2]
TINY_NET = {'type': 'MIAVSR', 'mid_channels': 8, 'embed_dim': 8, 'depths': [1], 'num_heads': [1],
            'drop_path_rate': 0.0}


pytestmark = pytest.mark.usefixtures('single_thread')  # tiny tensors: see conftest.single_thread


@pytest.fixture(scope='module')
def clips(sample_reds_clips) -> Path:
    """Two real 6-frame clips (the bundled sample video set: 128x192 GT, MATLAB-bicubic x4 LR) as disk folders."""
    return sample_reds_clips(('000', '011'), 6)


def val_dataset(clips: Path, **extra) -> torch.utils.data.Dataset:
    return DATASET_REGISTRY.get('VideoClipTestDataset')({
        'name': 'clips', 'dataroot_gt': str(clips / 'gt'), 'dataroot_lq': str(clips / 'lq'),
        'meta_info_file': str(clips / 'meta.txt'), 'io_backend': {'type': 'disk'}, **extra})


def model_options(tmp_path: Path, **train) -> dict:
    return {'name': 'rvsr', 'is_train': True, 'scale': 4, 'device': 'cpu', 'model_type': 'RecurrentVSRModel',
            'network_g': dict(TINY_NET),
            'path': {'experiments_root': str(tmp_path), 'visualization': str(tmp_path / 'vis')},
            'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                      'pixel_opt': {'type': 'CharbonnierLoss'},
                      'sparsity_opt': {'type': 'SparsityLoss', 'loss_weight': 1e-4}, **train},
            'val': {'compare_bicubic': True,
                    'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}}}


def real_batch(clips: Path, frames: int = 3) -> dict:
    ds = val_dataset(clips, chunk_size=frames)
    item = ds[0]
    return {'lq': item['lq'][None, :, :, :16, :16], 'gt': item['gt'][None, :, :, :64, :64]}


def test_training_through_the_loop(tmp_path, clips, capsys):
    """train.py's loop: CharbonnierLoss + SparsityLoss terms logged, EMA checkpoint, per-clip validation table."""
    opt = {'name': 'loop', 'model_type': 'RecurrentVSRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
           'datasets': {
               'train': {'type': 'REDSClipDataset', 'dataroot_gt': str(clips / 'gt'),
                         'dataroot_lq': str(clips / 'lq'), 'meta_info_file': str(clips / 'meta.txt'),
                         'val_partition': [], 'io_backend': {'type': 'disk'}, 'num_frame': 3, 'gt_size': 64,
                         'use_hflip': True, 'use_rot': True, 'batch_size_per_gpu': 1, 'num_worker_per_gpu': 0},
               'val': {'type': 'VideoClipTestDataset', 'dataroot_gt': str(clips / 'gt'),
                       'dataroot_lq': str(clips / 'lq'), 'meta_info_file': str(clips / 'meta.txt'),
                       'io_backend': {'type': 'disk'}, 'chunk_size': 4, 'chunk_overlap': 2}},
           'network_g': dict(TINY_NET), 'path': {'experiments_root': str(tmp_path / 'exp')},
           'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                     'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [2], 'restart_weights': [1],
                                   'eta_min': 1e-7},
                     'total_iter': 2, 'ema_decay': 0.999, 'fix_flow': 1, 'flow_lr_mul': 0.125,
                     'pixel_opt': {'type': 'CharbonnierLoss', 'loss_weight': 1.0},
                     'sparsity_opt': {'type': 'SparsityLoss', 'loss_weight': 1e-4}},
           'val': {'val_freq': 0, 'compare_bicubic': True,
                   'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}},
           'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False}}
    path = tmp_path / 'loop.yml'
    path.write_text(yaml.safe_dump(opt))
    assert main(['-opt', str(path)], root=tmp_path) == 0
    logs = [json.loads(line) for line in (tmp_path / 'exp' / 'train_log.jsonl').read_text().splitlines()]
    assert [r['iter'] for r in logs] == [1, 2]
    for row in logs:
        assert 0 < row['l_pixel'] < 1 and 0 < row['l_sparsity'] <= 1e-4  # 1e-4 x a keep ratio in (0, 1]
        # the SpyNet group starts at lr x 0.125 and follows the same cosine factor towards eta_min
        factor = (row['lr'][0] - 1e-7) / (1e-3 - 1e-7)
        assert row['lr'][1] == pytest.approx(1e-7 + (1e-3 * 0.125 - 1e-7) * factor, rel=1e-9)
    saved = torch.load(tmp_path / 'exp' / 'models' / 'net_g_latest.pth', weights_only=True)
    assert {'params', 'params_ema', 'network_g'} <= set(saved)
    out = capsys.readouterr().out
    table = out[out.index('Validation table'):]
    # one row per clip although the validation set has 2 chunks per clip; 6 frames each
    assert [line.split()[0] for line in table.splitlines()[3:6]] == ['000', '011', 'average']
    assert all(line.split()[1] == '6' for line in table.splitlines()[3:5])


def test_sparsity_and_pixel_terms(tmp_path, clips):
    """The logged terms are CharbonnierLoss(output, gt) and 1e-4 x the mean of the network's keep ratios."""
    model = MODEL_REGISTRY.get('RecurrentVSRModel')(model_options(tmp_path))
    net = model.net_g
    net.gumbel_noise = False  # deterministic decisions, so an independent forward reproduces them
    model.feed_data(real_batch(clips))
    terms = model.compute_losses(1)
    with torch.no_grad():
        out, ratios = net(model.lq, return_keep_ratios=True)
    assert ratios.shape == (4, 2, 1)  # branches, frames after the first, blocks
    assert terms['l_sparsity'].item() == pytest.approx(1e-4 * ratios.mean().item(), rel=1e-6)
    assert terms['l_pixel'].item() == pytest.approx(CharbonnierLoss()(out, model.gt).item(), rel=1e-6)
    terms['l_sparsity'].backward()  # the straight-through estimator carries the sparsity gradient to the mask
    grad = net.patch_align['forward_2'].layers[0].residual_group.blocks[0].attn.predmask.rnn.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_sparsity_without_mask_is_an_error(tmp_path, clips):
    opt = model_options(tmp_path)
    opt['network_g']['use_mask'] = False
    model = MODEL_REGISTRY.get('RecurrentVSRModel')(opt)
    model.feed_data(real_batch(clips))
    with pytest.raises(ValueError, match='sparsity_opt'):
        model.compute_losses(1)


def test_fix_flow_and_flow_lr_mul(tmp_path, clips):
    model = MODEL_REGISTRY.get('RecurrentVSRModel')(model_options(tmp_path, fix_flow=1, flow_lr_mul=0.125))
    spynet = model.net_g.spynet
    groups = model.optimizer.param_groups
    assert [g['lr'] for g in groups] == [1e-3, 1e-3 * 0.125]
    assert {id(p) for p in groups[1]['params']} == {id(p) for p in spynet.parameters()}
    assert not {id(p) for p in groups[0]['params']} & {id(p) for p in spynet.parameters()}
    before = {k: v.clone() for k, v in spynet.state_dict().items()}
    batch = real_batch(clips)
    model.feed_data(batch)
    model.optimize_parameters(1)  # frozen: no gradient, unchanged
    assert not any(p.requires_grad for p in spynet.parameters())
    assert all(torch.equal(v, spynet.state_dict()[k]) for k, v in before.items())
    model.feed_data(batch)
    model.micro_step = 2  # optimize_parameters counts the micro-batch before compute_losses: step 2 in progress
    with model.autocast():
        total = sum(model.compute_losses(2).values())
    assert all(p.requires_grad for p in spynet.parameters())  # trainable from iteration fix_flow + 1
    total.backward()
    # MIA-VSR moves features with nearest-neighbour patch warping: the flow's gradient is exactly zero (a
    # documented property of the architecture, not of the model type), so SpyNet gets zero gradients.
    grads = [p.grad for p in spynet.parameters()]
    assert all(g is not None for g in grads) and all(float(g.abs().max()) == 0.0 for g in grads)


def test_owned_frames_split_overlaps():
    from vsrkit.data.video_clip_test_dataset import VideoClipTestDataset

    for length, chunk, overlap in [(20, 8, 2), (6, 4, 2), (7, 3, 1), (10, 10, 0), (13, 5, 3)]:
        spans = VideoClipTestDataset.chunks(length, chunk, overlap)
        owned = [list(owned_frames(s, e - s, length, overlap)) for s, e in spans]
        assert sorted(i for part in owned for i in part) == list(range(length))
        assert all(s <= part[0] and part[-1] < e for (s, e), part in zip(spans, owned))


def test_validation_rows_per_clip(tmp_path, clips):
    """Chunked and whole-clip validation give the same per-clip bicubic numbers, equal to basicsr's PSNR
    averaged over every frame of the clip; the network's column is a per-clip row as well."""
    model = MODEL_REGISTRY.get('RecurrentVSRModel')(model_options(tmp_path))
    whole = model.validation(val_dataset(clips), 0)
    rows_whole = model.last_validation
    chunked = model.validation(val_dataset(clips, chunk_size=4, chunk_overlap=2), 0)
    rows_chunked = model.last_validation
    assert [r['name'] for r in rows_chunked] == ['000', '011'] and all(r['frames'] == 6 for r in rows_chunked)
    for a, b in zip(rows_whole, rows_chunked):
        assert a['bicubic_psnr'] == pytest.approx(b['bicubic_psnr'], abs=1e-9)
    for row in rows_whole:
        values = []
        for i in range(6):
            lq = cv2.imread(str(clips / 'lq' / row['name'] / f'{i:08d}.png'))[..., ::-1].astype(np.float32) / 255
            up = bicubic_frame(torch.from_numpy(lq.copy()).permute(2, 0, 1), 4).permute(1, 2, 0).numpy()
            image = np.round(up[..., ::-1] * 255).astype(np.uint8)
            gt = cv2.imread(str(clips / 'gt' / row['name'] / f'{i:08d}.png'))
            values.append(calculate_psnr(image, gt, crop_border=0))
        assert row['bicubic_psnr'] == pytest.approx(np.mean(values), abs=1e-9)
    assert whole['bicubic_psnr'] == pytest.approx(np.mean([r['bicubic_psnr'] for r in rows_whole]))
    assert np.isfinite(chunked['psnr']) and np.isfinite(whole['psnr'])
    model.opt['val']['center_frame_only'] = True
    model.validation(val_dataset(clips, chunk_size=4, chunk_overlap=2), 0)
    assert [r['frames'] for r in model.last_validation] == [1, 1]


@pytest.mark.parametrize('name', ['miavsr_reds', 'miavsr_vimeo', 'miavsr_sample'])
def test_options_files(name):
    """The options pass the registry/signature checks (absent REDS/Vimeo data aside) and hold the recipe."""
    from vsrkit.engine.option_checks import check_options
    from vsrkit.engine.options import load_options

    opt = load_options(ROOT / 'options' / f'{name}.yml', root=ROOT)
    check_options(opt, sample_builder_for=lambda path: True)  # data roots are not checked here
    train = opt['train']
    assert opt['model_type'] == 'RecurrentVSRModel' and train['fix_flow'] and train['flow_lr_mul'] == 0.125
    assert train['pixel_opt']['type'] == 'CharbonnierLoss' and train['sparsity_opt']['loss_weight'] == 1e-4
    if name == 'miavsr_sample':
        return
    assert train['fix_flow'] == 5000 and train['ema_decay'] == 0.999 and train['amp'] == 'fp16'
    assert train['optim_g'] == {'type': 'Adam', 'lr': 2e-4 if name == 'miavsr_reds' else 1e-4, 'weight_decay': 0,
                                'betas': [0.9, 0.99]}
    assert train['scheduler']['periods'] == [600000 if name == 'miavsr_reds' else 300000]
    assert train['scheduler']['eta_min'] == 1e-7
    data = opt['datasets']['train']
    assert data['gt_size'] == 256 and data['batch_size_per_gpu'] == 3
    assert (data['num_frame'], bool(data.get('flip_sequence'))) == ((16, False) if name == 'miavsr_reds' else (7, True))
    net = {k: v for k, v in opt['network_g'].items() if k not in ('type', 'spynet_path')}
    from vsrkit.archs.miavsr_arch import MIAVSR
    assert sum(p.numel() for p in MIAVSR(**net).parameters()) / 1e6 == pytest.approx(16.60, abs=0.01)  # published


@pytest.mark.parametrize('amp', ['fp16', 'bf16'])
def test_mixed_precision_steps_on_cuda(tmp_path, cuda, amp):
    """Recurrent training steps under CUDA autocast (fp16 with GradScaler, bf16 without) on real frames (crops of
    scikit-image's astronaut photo, x4 area-averaged): the loss is the fp32 step's within autocast's rounding but not
    equal to it, GradScaler is on for fp16 only, and the weights move."""
    from skimage import data
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    gt = torch.stack([photo[:, 100 + 2 * i:164 + 2 * i, 200 + 3 * i:264 + 3 * i] for i in range(3)])[None]
    batch = {'lq': torch.nn.functional.avg_pool2d(gt[0], 4)[None], 'gt': gt}
    terms, models = {}, {}
    for dtype in (None, amp):
        opt = model_options(tmp_path, **({'amp': dtype} if dtype else {}))
        opt['device'] = 'cuda'
        torch.manual_seed(0)
        model = models[dtype] = MODEL_REGISTRY.get('RecurrentVSRModel')(opt)
        model.net_g.gumbel_noise = False  # the same decisions in both steps
        start = {k: v.clone() for k, v in model.net_g.state_dict().items()}
        model.feed_data(batch)
        model.optimize_parameters(1)
        terms[dtype] = model.get_current_log()['l_pixel']
        # fp16: GradScaler skips a step whose scaled gradients overflow, and lowers its scale for the next
        moved = lambda: any(not torch.equal(start[k], v) for k, v in model.net_g.state_dict().items())  # noqa: E731
        for step in range(2, 6):
            if moved():
                break
            model.optimize_parameters(step)
        assert moved(), f'{dtype or "fp32"}: no weight moved in 5 steps'
    assert models[amp].amp_dtype is {'fp16': torch.float16, 'bf16': torch.bfloat16}[amp]
    assert models[amp].scaler.is_enabled() == (amp == 'fp16')
    # autocast changed the arithmetic (the output itself is fp32: the bicubic skip is added in fp32), within rounding
    assert terms[amp] != terms[None] and terms[amp] == pytest.approx(terms[None], rel=2e-2)
