"""VDSR: very deep residual super-resolution on the luminance channel (Kim et al., CVPR 2016).

The network does not upscale. The caller upscales the LR image bicubically to the target size (any scale: one
model serves x2, x3 and x4), takes its Y channel in [0, 1], and the network adds a predicted residual:
``forward(y) = output(residual_layer(relu(input(y)))) + y``. All convolutions are 3x3, padding 1, without bias;
each body conv is followed by a ReLU. Parameter names equal twtygqyy/pytorch-vdsr's ``vdsr.Net`` (``input``,
``residual_layer.N.conv``, ``output``), so its weights — read from the published whole-module pickle by
:func:`vsrkit.utils.legacy_checkpoint.load_legacy_checkpoint` — load with ``strict=True`` (664,704 parameters).

``widths`` rebuilds a physically pruned network (see :mod:`vsrkit.archs.pruning`): the output channels of the
input conv and of each body conv, one entry per conv; the output conv always maps back to one channel.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from vsrkit.archs.spec import ArchSpec, ModelIO, register_spec
from vsrkit.utils.registry import ARCH_REGISTRY, register


class ConvReLU(nn.Module):
    """3x3 bias-free conv followed by ReLU (the original's ``Conv_ReLU_Block``; holds the ``conv`` name)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


@register(ARCH_REGISTRY)
class VDSR(nn.Module):
    """VDSR residual network on the bicubic-upscaled Y channel (see module docstring).

    Args:
        num_channels: width of every hidden layer when ``widths`` is None (64 in the original).
        num_layers: number of body conv + ReLU blocks between the input and output convs (18 in the original,
            20 convolutions in all).
        widths: per-layer output channels of the input conv and of each body conv (``num_layers + 1`` entries),
            for a pruned network; overrides ``num_channels``.
    """

    def __init__(self, num_channels: int = 64, num_layers: int = 18, widths: Sequence[int] | None = None) -> None:
        super().__init__()
        if widths is None:
            widths = [num_channels] * (num_layers + 1)
        widths = [int(w) for w in widths]
        if len(widths) != num_layers + 1:
            raise ValueError(f'VDSR widths must have num_layers + 1 = {num_layers + 1} entries (input conv and '
                             f'{num_layers} body convs), got {len(widths)}: {widths}')
        if min(widths) < 1:
            raise ValueError(f'VDSR widths must be positive, got {widths}')
        self.widths = widths
        # Registration order as in the original, so state_dict() lists keys in the same order.
        self.residual_layer = nn.Sequential(*(ConvReLU(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:])))
        self.input = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.output = nn.Conv2d(widths[-1], 1, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # The original's init: N(0, sqrt(2 / (k·k·out_channels))), i.e. He-normal with fan-out.
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, H, W) bicubic-upscaled Y in [0, 1] → refined Y of the same size (not clamped)."""
        return self.output(self.residual_layer(self.relu(self.input(x)))) + x


def vdsr_conv_chain(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The conv weight keys of a VDSR state dict in data-flow order: input, residual_layer.0 … N-1, output."""
    body = sorted((int(m.group(1)), k) for k in state_dict
                  if (m := re.fullmatch(r'residual_layer\.(\d+)\.conv\.weight', k)))
    chain = ['input.weight', *(k for _, k in body), 'output.weight']
    missing = [k for k in chain if k not in state_dict]
    if missing:
        raise KeyError(f'not a VDSR state dict: missing {missing} (expected input.weight, '
                       'residual_layer.N.conv.weight, output.weight)')
    return chain


def vdsr_widths(state_dict: Mapping[str, torch.Tensor]) -> list[int]:
    """Output channels of the input conv and of each body conv of a VDSR state dict."""
    return [state_dict[k].shape[0] for k in vdsr_conv_chain(state_dict)[:-1]]


def vdsr_network_options(widths: Sequence[int]) -> dict[str, Any]:
    """``network_g`` options for a VDSR with these per-layer widths (``VDSR(**opts)`` without 'type')."""
    return {'type': 'VDSR', 'num_channels': max(widths), 'num_layers': len(widths) - 1, 'widths': list(widths)}


register_spec(ArchSpec(
    'VDSR', present=('input.weight', 'residual_layer.0.conv.weight', 'output.weight'),
    infer=lambda s: {k: v for k, v in vdsr_network_options(vdsr_widths(s)).items() if k != 'type'},
    # The Y channel of the caller's bicubic upscale in, the refined Y out: the network itself keeps the size. bf16
    # on an AMX CPU: 1.66x fp32's speed on a 360x640 frame (benchmarks/tiny_models.py, 2 threads), the published
    # weights' output 58.7 dB from the fp32 output (skimage's camera)
    io=lambda o: ModelIO('frame', 'y_bicubic', 1, 1, 1, amx_dtype='bf16')))
