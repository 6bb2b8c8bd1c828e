"""Grey2RGBAutoEncoder and ConvLSTM: published key lists, function vs independent constructions, the layer bug."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn

from vsrkit.archs.convlstm_arch import ConvLSTM
from vsrkit.archs.grey2rgb_arch import GREY2RGB_RELEASES, Grey2RGBAutoEncoder


def _state_entries(sd: dict) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix('torch.')) for k, v in sd.items()]


def _grey(size: int = 24) -> torch.Tensor:
    return torch.from_numpy(data.camera()[200:200 + size, 220:220 + size].astype(np.float32) / 255.)[None, None]


def _grey_clip(frames: int = 5, size: int = 20) -> torch.Tensor:
    """A camera pan over a real photo: (1, T, 1, size, size)."""
    cam = data.camera().astype(np.float32) / 255.
    return torch.stack([torch.from_numpy(cam[150:150 + size, 200 + 3 * t:200 + 3 * t + size])
                        for t in range(frames)])[None, :, None]


def _sequential_autoencoder(enc: list[int], dec: list[int], bn: bool, act) -> nn.Module:
    """The published structure written out by hand."""
    def stage(chs, conv, last):
        layers = []
        for a, b in zip(chs[:-1], chs[1:]):
            layers += [conv(a, b, 3, 1, 1)] + ([nn.BatchNorm2d(b)] if bn else []) + [act()]
        if last:
            layers[-1] = nn.Sigmoid()
        return nn.Sequential(*layers)
    model = nn.Module()
    model.encoder, model.decoder = stage(enc, nn.Conv2d, False), stage(dec, nn.ConvTranspose2d, True)
    return model


@pytest.mark.parametrize('release, json_name, enc, dec, bn, act', [
    ('v3.0', 'grey2rgb_autoencoder_v3', [1, 3, 6, 12, 24], [24, 12, 6, 3], True, nn.LeakyReLU),
    ('head', 'grey2rgb_autoencoder_head', [1, 4, 8, 16, 32], [32, 16, 8, 4, 3], False, nn.ReLU),
])
def test_grey2rgb_releases(release, json_name, enc, dec, bn, act, reference_keys):
    model = Grey2RGBAutoEncoder.from_release(release)
    assert _state_entries(model.state_dict()) == reference_keys(json_name)
    assert _state_entries(Grey2RGBAutoEncoder(**GREY2RGB_RELEASES[release]).state_dict()) == reference_keys(json_name)
    ref = _sequential_autoencoder(enc, dec, bn, act)
    if bn:  # non-trivial running statistics so that eval mode really exercises them
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
    model.load_state_dict(ref.state_dict(), strict=True)
    x = _grey()
    for mode in ('train', 'eval'):
        getattr(model, mode)(), getattr(ref, mode)()
        with torch.no_grad():
            out, expected = model(x), ref.decoder(ref.encoder(x))
        assert out.shape == (1, 3, 24, 24)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert Grey2RGBAutoEncoder().state_dict().keys() == Grey2RGBAutoEncoder.from_release('v3.0').state_dict().keys()
    with pytest.raises(KeyError, match='v2.0'):
        Grey2RGBAutoEncoder.from_release('v2.0')


@pytest.mark.parametrize('json_name', ['convlstm_v3', 'convlstm_head'])
def test_convlstm_keys(json_name, reference_keys):
    # The two published key lists are identical: lstm_model.py did not change between v3.0 and the head.
    assert _state_entries(ConvLSTM().state_dict()) == reference_keys(json_name)
    assert _state_entries(ConvLSTM(stack_layers=True).state_dict()) == reference_keys(json_name)


def _hand_written_convlstm(x: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor]], alpha: float
                           ) -> torch.Tensor:
    """The original's loop, layer by layer over the raw frames; only the last layer's hidden states are output."""
    b, t_len, _, h, w = x.shape

    def cell(inp, hc, wb):
        hidden, c = hc
        z = F.conv2d(torch.cat([inp, hidden], 1), wb[0], wb[1], padding=1)
        i, f, o, g = z[:, 0:1], z[:, 1:2], z[:, 2:3], z[:, 3:4]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    outputs = []
    for layer, wb in enumerate(weights):
        hc = (torch.zeros(b, 1, h, w), torch.zeros(b, 1, h, w))
        outputs = []
        for t in range(t_len - 1):
            hc = cell(x[:, t], hc, wb)
            outputs.append(hc[0])
            if t != t_len - 2:
                hc = cell((1 - alpha) * x[:, t] + alpha * x[:, t + 1], hc, wb)
    hc = cell(x[:, -1], hc, weights[-1])  # the extra frame after the last known one
    return torch.stack(outputs + [hc[0]], 1)


@pytest.mark.parametrize('alpha', [0.5, 0.6])
def test_convlstm_default_is_the_original_recurrence(alpha):
    torch.manual_seed(0)
    model = ConvLSTM(alpha=alpha)
    for p in model.parameters():
        nn.init.uniform_(p, -1.0, 1.0)
    x = _grey_clip()
    with torch.no_grad():
        out, state = model(x)
    expected = _hand_written_convlstm(x, [(c.conv.weight, c.conv.bias) for c in model.cells], alpha)
    assert out.shape == (1, 5, 1, 20, 20) and len(state) == 3
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert model(x[:, :1])[0].shape == (1, 1, 1, 20, 20)
        assert model(x[:, :2])[0].shape == (1, 2, 1, 20, 20)


def test_convlstm_stack_layers_fixes_the_dead_layers():
    torch.manual_seed(0)
    raw, stacked = ConvLSTM(), ConvLSTM(stack_layers=True)
    for p in raw.parameters():
        nn.init.uniform_(p, -1.0, 1.0)
    stacked.load_state_dict(raw.state_dict(), strict=True)
    x = _grey_clip()
    with torch.no_grad():
        out_raw, out_stacked = raw(x)[0], stacked(x)[0]
        assert (out_raw - out_stacked).abs().max() > 1e-3
        # The original's bug: layers 0 and 1 do not influence the output at all; stacking makes them matter.
        for m in (raw, stacked):
            m.cells[0].conv.weight.add_(0.5)
        assert torch.equal(raw(x)[0], out_raw)
        assert (stacked(x)[0] - out_stacked).abs().max() > 1e-3


def test_convlstm_bad_input():
    with pytest.raises(ValueError, match='num_layers'):
        ConvLSTM(hidden_dims=(1, 1), num_layers=3)
    with pytest.raises(ValueError, match='B, T, C, H, W'):
        ConvLSTM()(torch.zeros(1, 1, 8, 8))
