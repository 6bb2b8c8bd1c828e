"""Spatio-temporal fusion training (colouriser per frame, ConvLSTM interpolator on even/odd frames) with each of
the published losses, and inference_scripts/spatiotemporal.py end to end on real frames of the sample video."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import vsrkit.models  # noqa: F401  (registers the model types)
from vsrkit.data.frame_sequence_dataset import EvenOddFrameDataset
from vsrkit.data.grey_rgb_dataset import GreyRGBFrameDataset
from vsrkit.data.sample_data import ensure_sample_data
from vsrkit.engine.options import load_options
from vsrkit.engine.train_loop import main as train_main
from vsrkit.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from analytic_nets import colouring_grey2rgb, colouring_reference, convlstm_reference, shifting_convlstm, to_uint8

ROOT = Path(__file__).resolve().parents[2]
FRAMES = ROOT / 'datasets' / 'sample' / 'video' / 'REDS' / 'train_sharp'
LOSSES = {'mse': '{type: MSELoss}', 'ssim': '{type: SSIMLoss, alpha: 0.1}', 'maxent': '{type: MaxEntLoss, form: tv}'}
OPTIONS = {'colouriser': 'grey2rgb_sample', 'interpolator': 'convlstm_sample'}


@pytest.fixture(scope='module')
def frames_root() -> Path:
    ensure_sample_data({'datasets': {'train': {'dataroot_gt': str(FRAMES)}}})
    return FRAMES


def pil_grey(path: Path) -> np.ndarray:
    """An independent grey conversion (PIL's ITU-R 601-2 luma) in [0, 1]."""
    return np.asarray(Image.open(path).convert('L'), dtype=np.float64) / 255.0


def test_even_frames_in_odd_frames_out(frames_root):
    dataset = EvenOddFrameDataset({'dataroot_gt': str(frames_root), 'clips': ['001', '002'], 'num_frame': 6,
                                   'phase': 'val'})
    assert len(dataset) == 2 * 3  # 20 frames per clip -> 3 chunks of 6, the remainder dropped
    item = dataset[1]
    assert item['key'] == '001/00000006'
    assert item['lq'].shape == item['gt'].shape == (3, 1, 128, 192)
    for slot, number in enumerate([6, 8, 10]):
        np.testing.assert_allclose(item['lq'][slot, 0].numpy(), pil_grey(frames_root / '001' / f'{number:08d}.png'),
                                   atol=1.01 / 255)
        np.testing.assert_allclose(item['gt'][slot, 0].numpy(),
                                   pil_grey(frames_root / '001' / f'{number + 1:08d}.png'), atol=1.01 / 255)
    with pytest.raises(ValueError, match='num_frame'):
        EvenOddFrameDataset({'dataroot_gt': str(frames_root), 'num_frame': 5})


def test_grey_rgb_pairs(frames_root):
    dataset = GreyRGBFrameDataset({'dataroot_gt': str(frames_root), 'clips': ['003'], 'phase': 'val'})
    item = dataset[4]
    path = frames_root / '003' / '00000004.png'
    rgb = np.asarray(Image.open(path).convert('RGB'), dtype=np.float64).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(item['gt'].numpy(), rgb, atol=1e-6)
    np.testing.assert_allclose(item['lq'][0].numpy(), pil_grey(path), atol=1.01 / 255)
    train = GreyRGBFrameDataset({'dataroot_gt': str(frames_root), 'clips': ['003'], 'gt_size': 48, 'use_rot': True})
    crop = train[0]
    assert crop['lq'].shape == (1, 48, 48) and crop['gt'].shape == (3, 48, 48)


def expected_loss(name: str, out: torch.Tensor, gt: torch.Tensor) -> float:
    """The published losses computed independently, image by image (frames of a clip each on their own)."""
    out = out.detach().double().reshape(-1, *out.shape[-3:]).numpy()
    gt = gt.double().reshape(-1, *gt.shape[-3:]).numpy()
    values = []
    for x, y in zip(out, gt):
        mse = np.mean((x - y) ** 2)
        if name == 'mse':
            values.append(mse)
        elif name == 'ssim':
            ssim = structural_similarity(x, y, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=1.0)
            values.append(0.9 * mse + 0.1 * (1 - ssim))
        else:
            tv = (np.abs(np.diff(x, axis=1)).sum() + np.abs(np.diff(x, axis=2)).sum()) / (x.shape[1] * x.shape[2])
            values.append(0.9 * mse + 0.1 * tv)
    return float(np.mean(values))


@pytest.mark.parametrize('loss', sorted(LOSSES))
@pytest.mark.parametrize('kind', sorted(OPTIONS))
def test_training_step(frames_root, kind, loss):
    opt = load_options(ROOT / 'options' / f'{OPTIONS[kind]}.yml', root=ROOT,
                       overrides=[f'train:pixel_opt={LOSSES[loss]}', 'datasets:train:gt_size=32'])
    opt['device'] = 'cpu'
    dataset_cls = GreyRGBFrameDataset if kind == 'colouriser' else EvenOddFrameDataset
    dataset = dataset_cls(dict(opt['datasets']['train']))
    batch = torch.utils.data.default_collate([dataset[0], dataset[len(dataset) - 1]])
    model = MODEL_REGISTRY.get(opt['model_type'])(opt)
    before = [p.detach().clone() for p in model.net_g.parameters()]
    with torch.no_grad():
        model.net_g.eval()  # the same function as in training, without touching BatchNorm's running statistics
        out = model.net_g(batch['lq'])
        out = out[0] if isinstance(out, tuple) else out
        model.net_g.train()
    if kind == 'colouriser':
        assert out.shape == batch['gt'].shape == (2, 3, 32, 32)
    else:
        assert out.shape == batch['gt'].shape == (2, 5, 1, 32, 32)
    model.feed_data(batch)
    model.optimize_parameters(1)
    logged = model.get_current_log()['l_pixel']
    if kind == 'interpolator':  # no BatchNorm: eval and train functions agree exactly
        assert logged == pytest.approx(expected_loss(loss, out, batch['gt']), rel=1e-4)
    else:  # training-mode BatchNorm: check the logged value against the model's own training forward
        assert np.isfinite(logged) and logged > 0
        assert logged == pytest.approx(expected_loss(loss, model.output, batch['gt']), rel=1e-4)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.net_g.parameters()))


def train(name: str, folder: Path) -> Path:
    code = train_main(['-opt', str(ROOT / 'options' / f'{name}.yml'), '--force_yml', 'train:total_iter=3',
                       f'path:experiments_root={folder}', 'logger:use_tb_logger=false',
                       'val:metrics={}'], root=ROOT)  # validation runs, unscored (speed)
    assert code == 0
    return folder / 'models' / 'net_g_latest.pth'


def hand_set(checkpoint: Path, setter) -> None:
    """Replace the trained weights in a training checkpoint by hand-set ones of the same network (``setter``)."""
    saved = torch.load(checkpoint, weights_only=True)
    options = dict(saved['network_g'])
    net = setter(ARCH_REGISTRY.get(options.pop('type'))(**options))
    for key in ('params', 'params_ema'):
        if key in saved:
            saved[key] = net.state_dict()
    torch.save(saved, checkpoint)


def test_spatiotemporal_end_to_end(frames_root, tmp_path, capsys):
    from vsrkit.inference_scripts.spatiotemporal import main as fuse_main

    colorizer_ckpt = train('grey2rgb_sample', tmp_path / 'colour')
    interpolator_ckpt = train('convlstm_sample', tmp_path / 'interp')
    # Three iterations leave both networks nearly constant; the training checkpoints get weights that compute known
    # functions instead (tests/analytic_nets.py), so interleaving, interpolation and colouring show in the output.
    hand_set(colorizer_ckpt, colouring_grey2rgb)
    hand_set(interpolator_ckpt, shifting_convlstm)
    clip = frames_root / '000'
    (tmp_path / 'in').mkdir()
    (tmp_path / 'ref').mkdir()
    for number in range(8):  # the real frames at the doubled rate; the input gets the even ones, in colour
        frame = cv2.imread(str(clip / f'{number:08d}.png'))
        cv2.imwrite(str(tmp_path / 'ref' / f'{number:08d}.png'), frame)
        if number % 2 == 0:
            cv2.imwrite(str(tmp_path / 'in' / f'{number // 2:08d}.png'), frame)
    capsys.readouterr()
    code = fuse_main([str(tmp_path / 'in'), str(tmp_path / 'out'), '--colorizer', str(colorizer_ckpt),
                      '--interpolator', str(interpolator_ckpt), '--reference', str(tmp_path / 'ref'),
                      '--device', 'cpu'])
    assert code == 0
    printed = capsys.readouterr().out
    outputs = sorted((tmp_path / 'out').glob('*.png'))
    assert [p.name for p in outputs] == [f'{i:08d}.png' for i in range(8)]  # 4 frames in -> 2N = 8 out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.out')]  # the temporary folder is gone

    # Independently (NumPy): grey input -> ConvLSTM recurrence -> interleave x0, p0, x1, p1, ... -> colour.
    inputs = [tmp_path / 'in' / f'{i:08d}.png' for i in range(4)]
    grey = np.stack([cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY) / 255.0 for path in inputs])
    assert max(np.abs(g - pil_grey(path)).max() for g, path in zip(grey, inputs)) <= 1.01 / 255  # BT.601 luma
    predicted = np.clip(convlstm_reference(grey, alpha=0.5), 0, 1)  # convlstm_sample.yml: alpha 0.5
    interleaved = [frame for pair in zip(grey, predicted) for frame in pair]
    expected = [to_uint8(colouring_reference(frame)) for frame in interleaved]
    for index, (path, rgb) in enumerate(zip(outputs, expected)):
        written = cv2.imread(str(path))[..., ::-1]
        assert np.abs(written.astype(int) - rgb).max() <= 1, index
    # the check has teeth: a known frame and the frame predicted after it differ, and so do consecutive inputs
    assert min(np.abs(expected[i].astype(int) - expected[i + 1]).mean() for i in range(7)) > 5

    references = [cv2.imread(str(tmp_path / 'ref' / f'{i:08d}.png')) for i in range(8)]
    psnr_all = np.mean([peak_signal_noise_ratio(r, cv2.imread(str(p)), data_range=255)
                        for r, p in zip(references, outputs)])
    line = next(row for row in printed.splitlines() if row.strip().startswith('all:'))
    assert float(line.split('PSNR')[1].split('dB')[0]) == pytest.approx(psnr_all, abs=1e-3)
    assert '4 frames in -> 8 frames out' in printed
