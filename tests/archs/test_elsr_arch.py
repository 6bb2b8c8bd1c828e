"""ELSR: published checkpoints load strictly; the function equals an independent functional construction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from vsrkit.archs.elsr_arch import ELSR


def _state_entries(sd: dict) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix('torch.')) for k, v in sd.items()]


def _reference_elsr(x: torch.Tensor, sd: dict, scale: int) -> torch.Tensor:
    """ELSR written with plain functional ops from the checkpoint tensors."""
    f = F.conv2d(x, sd['layer1.weight'], sd['layer1.bias'], padding=1)
    r = F.conv2d(f, sd['layer2_4.conv1.weight'], sd['layer2_4.conv1.bias'], padding=1)
    r = F.prelu(r, sd['layer2_4.prelu.weight'])
    f = f + F.conv2d(r, sd['layer2_4.conv2.weight'], sd['layer2_4.conv2.bias'], padding=1)
    return F.pixel_shuffle(F.conv2d(f, sd['layer5.weight'], sd['layer5.bias'], padding=1), scale)


@pytest.mark.parametrize('scale, params', [(2, 1489), (4, 3469)])
def test_keys_and_parameter_count(scale, params, reference_keys):
    model = ELSR(scale=scale)
    assert _state_entries(model.state_dict()) == reference_keys(f'elsr_x{scale}')
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize('scale', [2, 4])
def test_published_checkpoint_function(scale, reference_checkpoint):
    sd = torch.load(reference_checkpoint(f'elsr_best_X{scale}_model.pth'), map_location='cpu', weights_only=True)
    model = ELSR(scale=scale).eval()
    model.load_state_dict(sd, strict=True)
    lr = torch.from_numpy(data.astronaut()[100:140, 180:220].astype(np.float32) / 255.).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = model(lr)
        ref = _reference_elsr(lr, sd, scale)
    assert out.shape == (1, 3, 40 * scale, 40 * scale)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # A trained network reconstructs the image: output near a bicubic upscale, not noise.
    bicubic = F.interpolate(lr, scale_factor=scale, mode='bicubic', align_corners=False)
    assert (out - bicubic).abs().mean() < 0.05


def test_clamp_only_on_request(reference_checkpoint):
    sd = torch.load(reference_checkpoint('elsr_best_X4_model.pth'), map_location='cpu', weights_only=True)
    free, clamped = ELSR(scale=4), ELSR(scale=4, clamp_output=True)
    free.load_state_dict(sd)
    clamped.load_state_dict(sd)
    x = torch.from_numpy(data.astronaut()[:24, :24].astype(np.float32) / 255.).permute(2, 0, 1)[None] * 1.5
    with torch.no_grad():
        y_free, y_clamped = free(x), clamped(x)
    assert y_free.max() > 1 or y_free.min() < 0  # a bright input drives the unclamped output out of range
    torch.testing.assert_close(y_clamped, y_free.clamp(0, 1))
    assert ELSR(scale=3)(torch.rand(1, 3, 5, 7)).shape == (1, 3, 15, 21)
