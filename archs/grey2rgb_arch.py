"""Grey2RGBAutoEncoder: the colourising auto-encoder of the spatio-temporal fusion pipeline.

From iSiddharth20/Generative-AI-Based-Spatio-Temporal-Fusion. A grey frame (1 channel) goes through an encoder
of 3x3 stride-1 convs and a decoder of 3x3 stride-1 transposed convs (no spatial change anywhere), each followed
by an optional BatchNorm and an activation; the decoder's last activation is a Sigmoid, so the RGB output lies in
(0, 1). Module indices inside ``encoder`` / ``decoder`` (nn.Sequential) equal the original's, so its state dicts
load with ``strict=True``.

The two published configurations (the constructor keyword arguments, usable as ``network_g`` options):

- ``GREY2RGB_RELEASES['v3.0']``: encoder 1→3→6→12→24, decoder 24→12→6→3, Conv/ConvTranspose → BatchNorm →
  LeakyReLU(0.01), last activation Sigmoid (after the last BatchNorm);
- ``GREY2RGB_RELEASES['head']`` (repository head): no BatchNorm, ReLU, encoder 1→4→8→16→32,
  decoder 32→16→8→4→3, Sigmoid.

``Grey2RGBAutoEncoder.from_release('v3.0')`` builds either.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vsrkit.archs.spec import ArchSpec, ModelIO, register_spec
from vsrkit.utils.registry import ARCH_REGISTRY, register

GREY2RGB_RELEASES: dict[str, dict[str, Any]] = {
    'v3.0': dict(in_channels=1, encoder_channels=(3, 6, 12, 24), decoder_channels=(12, 6, 3), batch_norm=True,
                 activation='leaky_relu'),
    'head': dict(in_channels=1, encoder_channels=(4, 8, 16, 32), decoder_channels=(16, 8, 4, 3), batch_norm=False,
                 activation='relu'),
}

_ACTIVATIONS = ('leaky_relu', 'relu')


@register(ARCH_REGISTRY)
class Grey2RGBAutoEncoder(nn.Module):
    """Convolutional grey-to-RGB auto-encoder (see module docstring; defaults = the v3.0 release).

    Args:
        in_channels: input channels (1, grey).
        encoder_channels: output channels of each encoder conv.
        decoder_channels: output channels of each decoder transposed conv; the last one is the number of output
            channels (3, RGB). The decoder starts from ``encoder_channels[-1]``.
        batch_norm: BatchNorm2d after every conv / transposed conv (v3.0) or none (head).
        activation: 'leaky_relu' (v3.0) or 'relu' (head), after every layer but the last, which gets a Sigmoid.
        negative_slope: slope of the LeakyReLU (PyTorch's default 0.01, as in the original).
    """

    def __init__(self, in_channels: int = 1, encoder_channels: Sequence[int] = (3, 6, 12, 24),
                 decoder_channels: Sequence[int] = (12, 6, 3), batch_norm: bool = True,
                 activation: str = 'leaky_relu', negative_slope: float = 0.01) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f'Grey2RGBAutoEncoder activation must be one of {_ACTIVATIONS}, got {activation!r}')
        if not encoder_channels or not decoder_channels:
            raise ValueError('Grey2RGBAutoEncoder encoder_channels and decoder_channels must not be empty, got '
                             f'{encoder_channels} and {decoder_channels}')
        self.batch_norm = batch_norm
        self.activation = activation
        self.negative_slope = negative_slope
        self.encoder = self._stage([in_channels, *encoder_channels], nn.Conv2d, last_sigmoid=False)
        self.decoder = self._stage([encoder_channels[-1], *decoder_channels], nn.ConvTranspose2d, last_sigmoid=True)

    @classmethod
    def from_release(cls, name: str) -> Grey2RGBAutoEncoder:
        """Build a published configuration: 'v3.0' or 'head' (keys of ``GREY2RGB_RELEASES``)."""
        if name not in GREY2RGB_RELEASES:
            raise KeyError(f'unknown Grey2RGBAutoEncoder release {name!r}; expected one of {list(GREY2RGB_RELEASES)}')
        return cls(**GREY2RGB_RELEASES[name])

    def _act(self) -> nn.Module:
        if self.activation == 'relu':
            return nn.ReLU(inplace=True)
        return nn.LeakyReLU(self.negative_slope, inplace=True)

    def _stage(self, channels: list[int], conv: type[nn.Module], last_sigmoid: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers.append(conv(c_in, c_out, kernel_size=3, stride=1, padding=1))
            if self.batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(self._act())
        if last_sigmoid:
            layers[-1] = nn.Sigmoid()
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) grey in [0, 1] → (B, decoder_channels[-1], H, W) in (0, 1)."""
        return self.decoder(self.encoder(x))


def _infer(s: dict[str, torch.Tensor]) -> dict[str, Any]:
    def out_channels(stage: str, transposed: bool) -> list[int]:
        # Conv weights are 4-d; a BatchNorm between them has 1-d weights at the next index.
        convs = sorted(int(m.group(1)) for k in s if (m := re.match(rf'{stage}\.(\d+)\.weight$', k))
                       and s[k].dim() == 4)
        return [s[f'{stage}.{i}.weight'].shape[1 if transposed else 0] for i in convs]

    batch_norm = any(k.endswith('running_mean') for k in s)
    # The two releases tie the activation to BatchNorm (v3.0: BatchNorm + LeakyReLU, head: ReLU alone).
    return {'in_channels': s['encoder.0.weight'].shape[1], 'encoder_channels': out_channels('encoder', False),
            'decoder_channels': out_channels('decoder', True), 'batch_norm': batch_norm,
            'activation': 'leaky_relu' if batch_norm else 'relu'}


register_spec(ArchSpec(
    'Grey2RGBAutoEncoder', present=('encoder.0.weight', 'decoder.0.weight'), infer=_infer,
    io=lambda o: ModelIO('frame', 'grey', o['in_channels'], list(o['decoder_channels'])[-1], 1),
    notes='activation follows the releases (BatchNorm: leaky_relu, none: relu) unless given'))
