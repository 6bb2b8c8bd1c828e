"""inference_scripts/reds4.py and vimeo90k.py end to end on real sample clips with a tiny random MIA-VSR
checkpoint: the table, CSV/JSON, saved frames, and the numbers against basicsr's metrics on the saved images."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import vsrkit.archs  # noqa: F401  (registers the archs)
from basicsr.metrics import calculate_psnr, calculate_ssim
from vsrkit.archs.miavsr_arch import MIAVSR
from vsrkit.evaluation.video_protocol import benchmark_main

from analytic_nets import blend_chunks, to_uint8

ROOT = Path(__file__).resolve().parents[2]
TINY = {'type': 'MIAVSR', 'mid_channels': 8, 'embed_dim': 8, 'depths': [1], 'num_heads': [1],
        'drop_path_rate': 0.0}


pytestmark = pytest.mark.usefixtures('single_thread')  # tiny tensors: see conftest.single_thread


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'inference_scripts' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random MIAVSR in vsrkit's checkpoint layout (network_g entry, weights as params_ema)."""
    torch.manual_seed(0)
    net = MIAVSR(**{k: v for k, v in TINY.items() if k != 'type'})
    ema = net.state_dict()
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.pth'
    torch.save({'params_ema': ema, 'network_g': dict(TINY)}, path)
    return path


@pytest.fixture(scope='module')
def short_clips(sample_reds_clips) -> Path:
    """Two real 5-frame REDS-layout clips (the sample set's 000 and 015) as disk folders."""
    return sample_reds_clips(('000', '015'), 5)


def independent_scores(images: list[Path], gts: list[Path], crop_border: int = 0) -> dict[str, float]:
    values = {k: [] for k in ('psnr_rgb', 'ssim_rgb', 'psnr_y', 'ssim_y')}
    for image_path, gt_path in zip(images, gts):
        image, gt = cv2.imread(str(image_path)), cv2.imread(str(gt_path))
        for channel, y in (('rgb', False), ('y', True)):
            values[f'psnr_{channel}'].append(calculate_psnr(image, gt, crop_border, test_y_channel=y))
            values[f'ssim_{channel}'].append(calculate_ssim(image, gt, crop_border, test_y_channel=y))
    return {k: float(np.mean(v)) for k, v in values.items()}


def test_reds4_end_to_end(tmp_path, checkpoint, short_clips, capsys):
    out = tmp_path / 'out'
    code = script('reds4').main(['--model', str(checkpoint), '--gt', str(short_clips / 'gt'), '--lq',
                                 str(short_clips / 'lq'), '--meta-info', str(short_clips / 'meta.txt'),
                                 '--chunk', '3', '--chunk-overlap', '2', '--crop-border', '2', '--out-dir', str(out),
                                 '--save-images', '--no-progress'])
    printed = capsys.readouterr().out
    assert code == 0
    assert 'psnr_rgb' in printed and 'ssim_y' in printed and 'average' in printed and 'bicubic_psnr_rgb' in printed
    result = json.loads((out / 'results.json').read_text())
    rows = {r['name']: r for r in result['clips']}
    assert list(rows) == ['000', '015'] and all(r['frames'] == 5 for r in rows.values())
    for clip, row in rows.items():
        images = sorted((out / 'images' / clip).glob('*.png'))
        assert len(images) == 5
        gts = [short_clips / 'gt' / clip / p.name for p in images]
        for key, value in independent_scores(images, gts, crop_border=2).items():
            assert row[key] == pytest.approx(value, abs=1e-9), (clip, key)
    assert result['average']['psnr_y'] == pytest.approx(np.mean([r['psnr_y'] for r in rows.values()]))
    with open(out / 'results.csv', newline='') as handle:
        table = list(csv.DictReader(handle))
    assert [r['name'] for r in table] == ['000', '015', 'average']
    assert float(table[0]['ssim_rgb']) == pytest.approx(rows['000']['ssim_rgb'])
    assert f"{rows['015']['psnr_rgb']:.4f}" in printed  # the printed table holds the same numbers

    # the saved frames are the network's output over chunks of 3 frames sharing 2 (starts 0, 1, 2), blended with
    # ramps built independently, in the clip's order
    net = MIAVSR(**{k: v for k, v in TINY.items() if k != 'type'}).eval()
    net.load_state_dict(torch.load(checkpoint, weights_only=True)['params_ema'])

    def network(clip: np.ndarray) -> np.ndarray:  # (t, h, w, 3) RGB -> (t, 4h, 4w, 3)
        with torch.no_grad():
            x = torch.from_numpy(clip).permute(0, 3, 1, 2)[None].float()
            return net(x)[0].permute(0, 2, 3, 1).double().numpy()

    for clip in rows:
        lq = np.stack([cv2.imread(str(p))[..., ::-1] / 255.0 for p in sorted((short_clips / 'lq' / clip).glob('*.png'))])
        expected = to_uint8(blend_chunks(network, lq, chunk=3, overlap=2))
        saved = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted((out / 'images' / clip).glob('*.png'))])
        assert saved.shape == expected.shape == (5, 128, 192, 3)
        assert np.abs(saved.astype(int) - expected).max() <= 1 and (saved == expected).mean() > 0.99, clip
        assert np.abs(expected[0].astype(int) - expected[4]).mean() > 2  # frames differ: their order is checked


def test_vimeo90k_centre_frame_on_sample(tmp_path, checkpoint, sample_video, capsys):
    """No data paths: Vimeo-90K-T is absent here, so the bundled sample septuplets are used and it says so."""
    vimeo = script('vimeo90k')
    bench = dataclasses.replace(vimeo.VIMEO90K_T, dataset={**vimeo.VIMEO90K_T.dataset,
                                                           'dataroot_gt': str(tmp_path / 'absent_GT.lmdb'),
                                                           'dataroot_lq': str(tmp_path / 'absent_LR.lmdb')})
    out = tmp_path / 'out'
    code = benchmark_main(bench, ['--model', str(checkpoint), '--out-dir', str(out), '--save-images',
                                  '--no-progress', '--no-bicubic'])
    captured = capsys.readouterr()
    assert code == 0
    assert 'evaluating on the bundled sample clips instead' in captured.err
    assert 'centre frame' in captured.out
    rows = json.loads((out / 'results.json').read_text())['clips']
    septuplets = [line.split()[0] for line in
                  (sample_video / 'vimeo90k' / 'meta_info_Vimeo90K_test_GT.txt').read_text().splitlines()]
    assert [r['name'] for r in rows] == septuplets and all(r['frames'] == 1 for r in rows)
    for row in rows:
        images = sorted((out / 'images' / row['name']).glob('*.png'))
        assert [p.name for p in images] == ['im4.png']  # only the centre frame is scored and saved
        gt = sample_video / 'vimeo90k' / 'vimeo_septuplet' / 'sequences' / row['name'] / 'im4.png'
        for key, value in independent_scores(images, [gt]).items():
            assert row[key] == pytest.approx(value, abs=1e-9), (row['name'], key)


def test_reds4_without_checkpoint_scores_bicubic_and_says_so(tmp_path, short_clips, capsys, monkeypatch):
    reds4 = script('reds4')
    bench = dataclasses.replace(reds4.REDS4, checkpoint=str(tmp_path / 'no_such.pth'))
    code = benchmark_main(bench, ['--gt', str(short_clips / 'gt'), '--lq', str(short_clips / 'lq'),
                                  '--meta-info', str(short_clips / 'meta.txt'), '--out-dir', str(tmp_path / 'o'),
                                  '--no-progress'])
    captured = capsys.readouterr()
    assert code == 0 and 'scoring bicubic upscaling only' in captured.err
    row = json.loads((tmp_path / 'o' / 'results.json').read_text())['clips'][0]
    assert 'psnr_rgb' not in row and row['bicubic_psnr_rgb'] > 20


def test_checkpoints_load_strictly(tmp_path, checkpoint, short_clips, capsys):
    """A checkpoint lacking one tensor (one that detection does not need) is reported, not filled in."""
    saved = torch.load(checkpoint, weights_only=True)
    del saved['params_ema']['conv_last.bias']
    torch.save(saved, tmp_path / 'incomplete.pth')
    code = script('reds4').main(['--model', str(tmp_path / 'incomplete.pth'), '--gt', str(short_clips / 'gt'),
                                 '--lq', str(short_clips / 'lq'), '--meta-info', str(short_clips / 'meta.txt'),
                                 '--out-dir', str(tmp_path / 'out'), '--no-progress'])
    err = capsys.readouterr().err
    assert code == 1 and 'conv_last.bias' in err and 'Traceback' not in err
    assert not (tmp_path / 'out' / 'results.json').exists()


def test_bad_arguments_are_reported(tmp_path, checkpoint, short_clips, capsys):
    reds4 = script('reds4')
    data = ['--gt', str(short_clips / 'gt'), '--lq', str(short_clips / 'lq'), '--meta-info',
            str(short_clips / 'meta.txt'), '--out-dir', str(tmp_path)]
    assert reds4.main(['--model', str(tmp_path / 'missing.pth')] + data) == 1
    assert 'missing.pth does not exist' in capsys.readouterr().err
    assert reds4.main(['--model', str(checkpoint), '--device', 'cpu', '--dtype', 'fp16'] + data) == 1
    assert 'fp16 needs CUDA' in capsys.readouterr().err
