"""VDSR: key lists, parameter counts, published weights' function and quality on a real photo."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from vsrkit.archs.vdsr_arch import VDSR
from vsrkit.archs.loader import standard_checkpoint
from basicsr.metrics import calculate_psnr  # noqa: E402  (after vsrkit: the compat shim must come first)
from basicsr.utils.color_util import rgb2ycbcr
from basicsr.utils.matlab_functions import imresize


def _state_entries(sd: dict) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix('torch.')) for k, v in sd.items()]


def _reference_vdsr(y: torch.Tensor, sd: dict) -> torch.Tensor:
    """VDSR as plain conv2d calls on the checkpoint tensors."""
    f = F.relu(F.conv2d(y, sd['input.weight'], padding=1))
    for i in range(18):
        f = F.relu(F.conv2d(f, sd[f'residual_layer.{i}.conv.weight'], padding=1))
    return F.conv2d(f, sd['output.weight'], padding=1) + y


@pytest.fixture(scope='module')
def epoch50(reference_checkpoint) -> dict:
    return standard_checkpoint(reference_checkpoint('vdsr_model_epoch_50.pth'))


def test_keys_and_parameter_counts(reference_keys):
    full, pruned = VDSR(), VDSR(widths=[32] * 19)
    assert _state_entries(full.state_dict()) == reference_keys('vdsr_x234')
    assert _state_entries(pruned.state_dict()) == reference_keys('vdsr_l1_pruned')
    assert sum(p.numel() for p in full.parameters()) == 664_704
    assert sum(p.numel() for p in pruned.parameters()) == 166_464
    assert _state_entries(VDSR(num_channels=32).state_dict()) == reference_keys('vdsr_l1_pruned')


def test_uneven_widths_and_bad_widths():
    net = VDSR(num_layers=2, widths=[5, 7, 3])
    assert [m.weight.shape[:2] for m in (net.input, *(b.conv for b in net.residual_layer), net.output)] == [
        (5, 1), (7, 5), (3, 7), (1, 3)]
    with pytest.raises(ValueError, match='num_layers \\+ 1'):
        VDSR(num_layers=18, widths=[32] * 18)


def test_epoch50_function_and_beats_bicubic(epoch50):
    opts = {k: v for k, v in epoch50['network_g'].items() if k != 'type'}
    model = VDSR(**opts).eval()
    model.load_state_dict(epoch50['params'], strict=True)

    scale = 2
    hr = data.astronaut()[60:156, 170:266].astype(np.float64) / 255.  # 96x96 face crop, divisible by 2, 3, 4
    lr = imresize(hr, 1 / scale)
    bicubic = np.clip(imresize(lr, scale), 0, 1)
    y_hr, y_bic = rgb2ycbcr(hr.astype(np.float32), y_only=True), rgb2ycbcr(bicubic.astype(np.float32), y_only=True)
    y_in = torch.from_numpy(y_bic)[None, None]
    with torch.no_grad():
        y_sr = model(y_in)
        ref = _reference_vdsr(y_in, epoch50['params'])
    torch.testing.assert_close(y_sr, ref, rtol=0, atol=1e-5)

    sr = y_sr[0, 0].clamp(0, 1).numpy() * 255.
    psnr_sr = calculate_psnr(sr, y_hr * 255., crop_border=scale)
    psnr_bic = calculate_psnr(y_bic * 255., y_hr * 255., crop_border=scale)
    print(f'VDSR epoch 50 x2 on astronaut crop (Y): {psnr_sr:.2f} dB vs bicubic {psnr_bic:.2f} dB')
    assert psnr_sr > psnr_bic + 1.0
