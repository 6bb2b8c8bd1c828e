"""VDSR training and evaluation: aligned multi-scale Y patches, the published optimizer recipe, and the Set5-style
protocol with the published weights on real photos."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.color
import skimage.data
import torch
from skimage.metrics import peak_signal_noise_ratio

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.utils.matlab_functions import imresize
from vsrkit.data.y_multiscale_dataset import YMultiScaleDataset, y_channel
from vsrkit.models.image_sr_model import ImageSRModel
from vsrkit.engine.options import load_options
from vsrkit.engine.train_loop import main as train_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def photo_dir(tmp_path_factory) -> Path:
    """Two real photo crops (sizes not multiples of 2, 3 or 4) as PNG."""
    folder = tmp_path_factory.mktemp('photos')
    astronaut, coffee = skimage.data.astronaut(), skimage.data.coffee()
    cv2.imwrite(str(folder / 'astronaut.png'), cv2.cvtColor(astronaut[30:161, 150:293], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / 'coffee.png'), cv2.cvtColor(coffee[100:227, 200:341], cv2.COLOR_RGB2BGR))
    return folder


def test_y_channel_is_bt601_luma_rounded(photo_dir):
    bgr = cv2.imread(str(photo_dir / 'astronaut.png'))
    expected = np.round(skimage.color.rgb2ycbcr(bgr[..., ::-1])[..., 0]) / 255.0
    np.testing.assert_allclose(y_channel(bgr), expected, atol=1e-9)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_patches_are_aligned_bicubic_pairs(photo_dir, scale):
    """Each LQ patch equals the same patch of the whole (scale-cropped) Y image bicubic-downscaled by ``scale``
    and upscaled again: the on-the-fly region degradation is exact, the origin is right, the scale is as drawn."""
    dataset = YMultiScaleDataset({'dataroot_gt': str(photo_dir), 'scales': [scale], 'gt_size': 41, 'phase': 'train',
                                  'use_hflip': False, 'use_rot': False, 'patches_per_image': 3})
    assert len(dataset) == 6
    whole = {}
    for key in dataset.keys:
        y = y_channel(cv2.imread(str(photo_dir / f'{key}.png')))
        y = y[:y.shape[0] - y.shape[0] % scale, :y.shape[1] - y.shape[1] % scale]
        whole[key] = (y, imresize(imresize(y, 1.0 / scale), scale))
    offsets = set()
    for index in range(len(dataset)):
        item = dataset[index]
        assert item['scale'] == scale and item['lq'].shape == item['gt'].shape == (1, 41, 41)
        top, left = item['origin']
        offsets.add((top % scale, left % scale))
        gt_full, lq_full = whole[item['key']]
        np.testing.assert_allclose(item['gt'][0].numpy(), gt_full[top:top + 41, left:left + 41], atol=1e-7)
        # basicsr's imresize computes in float32: equal up to ~1e-6; a one-pixel shift differs by ~1e-2.
        np.testing.assert_allclose(item['lq'][0].numpy(), lq_full[top:top + 41, left:left + 41], atol=1e-5)
        assert np.abs(item['lq'][0].numpy() - lq_full[top + 1:top + 42, left:left + 41]).max() > 1e-3
        assert (item['lq'] - item['gt']).abs().mean() > 1e-3  # the degradation is real
    if scale > 2:
        assert len(offsets) > 1  # patches are not all on the LR grid's phase 0


def test_scales_drawn_per_sample_and_validation_whole_images(photo_dir):
    dataset = YMultiScaleDataset({'dataroot_gt': str(photo_dir), 'scales': [2, 3, 4], 'phase': 'train',
                                  'patches_per_image': 30})
    import random

    random.seed(0)
    assert {dataset[i]['scale'] for i in range(30)} == {2, 3, 4}
    val = YMultiScaleDataset({'dataroot_gt': str(photo_dir), 'scales': [3], 'phase': 'val'})
    item = val[0]
    assert item['gt'].shape == (1, 129, 141)  # 131x143 cropped to multiples of 3
    with pytest.raises(ValueError, match='scales'):
        YMultiScaleDataset({'dataroot_gt': str(photo_dir), 'scales': [2, 3], 'phase': 'val'})


def test_training_step_uses_recipe_optimizer_and_clip(photo_dir):
    opt = load_options(ROOT / 'options' / 'vdsr_x234.yml', root=ROOT)
    opt['device'] = 'cpu'
    model = ImageSRModel(opt)
    assert type(model.optimizer) is torch.optim.SGD
    group = model.optimizer.param_groups[0]
    assert (group['lr'], group['momentum'], group['weight_decay']) == (0.1, 0.9, 1e-4)
    assert type(model.scheduler) is torch.optim.lr_scheduler.StepLR
    assert (model.scheduler.step_size, model.scheduler.gamma) == (5820, 0.1)
    assert model.grad_clip_norm == 0.4 and model.losses['pixel'].reduction == 'sum'

    dataset = YMultiScaleDataset({'dataroot_gt': str(photo_dir), 'scales': [2, 3, 4], 'phase': 'train'})
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    before = [p.detach().clone() for p in model.net_g.parameters()]
    with torch.no_grad():
        expected = ((model.net_g(batch['lq']) - batch['gt']) ** 2).sum().item()
    model.feed_data(batch)
    model.optimize_parameters(1)
    log = model.get_current_log()
    assert log['l_pixel'] == pytest.approx(expected, rel=1e-4)
    assert log['grad_norm'] > 0.4  # the raw norm, before clipping
    # First SGD step (momentum buffer = gradient): w1 = w0 - lr * (clipped_grad + wd * w0), so the clipped
    # gradient recovered from the update has norm exactly 0.4.
    clipped = [(b - p.detach()) / 0.1 - 1e-4 * b for b, p in zip(before, model.net_g.parameters())]
    assert torch.sqrt(sum((g ** 2).sum() for g in clipped)).item() == pytest.approx(0.4, rel=1e-3)


def test_sample_options_train_through_the_loop(tmp_path):
    code = train_main(['-opt', str(ROOT / 'options' / 'vdsr_sample.yml'), '--force_yml', 'train:total_iter=1',
                       f'path:experiments_root={tmp_path}', 'logger:use_tb_logger=false',
                       'datasets:train:batch_size_per_gpu=2', 'network_g:num_layers=2'], root=ROOT)
    assert code == 0
    assert (tmp_path / 'models' / 'net_g_latest.pth').is_file()


def _independent_bicubic_y_psnr(path: Path, scale: int) -> float:
    rgb = cv2.imread(str(path))[..., ::-1]
    rgb = rgb[:rgb.shape[0] - rgb.shape[0] % scale, :rgb.shape[1] - rgb.shape[1] % scale]
    lr = np.clip(np.round(imresize(rgb / 255.0, 1.0 / scale) * 255), 0, 255)
    up = np.clip(np.round(imresize(lr / 255.0, scale) * 255), 0, 255).astype(np.uint8)
    y_gt, y_up = (skimage.color.rgb2ycbcr(img)[..., 0][scale:-scale, scale:-scale] for img in (rgb, up))
    return peak_signal_noise_ratio(y_gt, y_up, data_range=255)


def test_eval_images_published_vdsr_beats_bicubic(reference_checkpoint, photo_dir, capsys):
    from vsrkit.inference_scripts.eval_images import main as eval_main
    from vsrkit.archs.loader import load_model
    from vsrkit.evaluation.image_protocol import evaluate_images

    checkpoint = reference_checkpoint('vdsr_model_epoch_50.pth')
    assert eval_main(['--model', str(checkpoint), '--input', str(photo_dir), '--scale', '2', '--device', 'cpu']) == 0
    printed = capsys.readouterr().out
    assert 'VDSR (y_bicubic input) x2' in printed and 'Y PSNR' in printed and 'average' in printed

    net, info = load_model(checkpoint)  # legacy whole-module pickle, read safely; options from VDSR's spec
    assert info['options']['widths'] == [64] * 19
    rows = evaluate_images(net, info['io'], photo_dir, 2)
    for row in rows:
        assert row['bicubic_psnr'] == pytest.approx(_independent_bicubic_y_psnr(photo_dir / f"{row['name']}.png", 2),
                                                    abs=1e-3)
        # NOTES 5: on Set5 the published model gains ~4 dB over bicubic (37.65 vs ~33.7); on these real photo
        # crops it must gain clearly too and land in the usual range of natural images.
        assert row['psnr'] > row['bicubic_psnr'] + 1.0
        assert 28.0 < row['psnr'] < 45.0
        assert row['ssim'] > row['bicubic_ssim']
    assert f"{np.mean([r['psnr'] for r in rows]):.4f}" in printed


def test_pruned_finetune_options_load_a_pruned_checkpoint(reference_checkpoint, tmp_path):
    """scripts/prune.py output + options/vdsr_pruned_finetune.yml: the widths in network_g match the shrunk
    checkpoint, which loads strictly and equals the published pruned file."""
    import importlib.util

    from vsrkit.utils.checkpoint import load_file

    spec = importlib.util.spec_from_file_location('prune_script', ROOT / 'scripts' / 'prune.py')
    prune_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prune_script)
    pruned = tmp_path / 'vdsr_l1_pruned.pth'
    assert prune_script.main(['--model', str(reference_checkpoint('vdsr_model_epoch_50.pth')), '--sparsity', '0.5',
                              '--output', str(pruned)]) == 0
    opt = load_options(ROOT / 'options' / 'vdsr_pruned_finetune.yml', root=ROOT,
                       overrides=[f'path:pretrain_network_g={pruned}'])
    opt['device'] = 'cpu'
    model = ImageSRModel(opt)
    assert model.net_g.widths == load_file(pruned)['network_g']['widths'] == [32] * 19
    published = load_file(reference_checkpoint('vdsr_l1_pruned_no_finetune.pth'))['params']
    loaded = model.net_g.state_dict()
    assert loaded.keys() == published.keys()
    for key, value in published.items():
        assert torch.equal(loaded[key], value), key
    assert sum(v.numel() for v in loaded.values()) == 166_464
