"""ELSR: the extremely lightweight real-time video SR network (arXiv 2208.14600, AIM 2022 winner).

Five convolutions on the LR frame: ``layer1`` lifts RGB to ``num_feat`` channels, ``layer2_4`` is one residual
block (conv → single-parameter PReLU → conv, plus the block's input), ``layer5`` predicts ``3·scale²`` channels
and ``layer6`` (PixelShuffle) rearranges them into the HR frame. There is no global skip and no bicubic path.
Parameter names equal andreacoppari/ELSR-torch's, so its ``best_X2_model.pth`` / ``best_X4_model.pth`` (plain
state dicts) load with ``strict=True``: 1,489 parameters at x2, 3,469 at x4.

Inputs and outputs are RGB in [0, 1]. The original clamps the output to [0, 1] only in its test scripts, never in
training (a clamp would zero the gradient of out-of-range pixels); ``clamp_output=True`` reproduces its test-time
behaviour, the default leaves the output unclamped for training.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vsrkit.archs.spec import ArchSpec, register_spec, scale_from_channels, single_frame_io
from vsrkit.utils.registry import ARCH_REGISTRY, register


class ELSRResBlock(nn.Module):
    """conv1 → PReLU (one shared slope) → conv2, added to the block input; names as in the original."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.prelu(self.conv1(x)))


@register(ARCH_REGISTRY)
class ELSR(nn.Module):
    """ELSR super-resolution network (see module docstring).

    Args:
        scale: upscaling factor (2 and 4 were published).
        in_channels: image channels in and out (RGB: 3).
        num_feat: feature channels of the body (6 in the original).
        clamp_output: clamp the output to [0, 1] as the original does at test time only. Keep it False for training.

    Initialisation follows the original (He-normal with fan-out for the body, zero biases) except that the last conv
    always gets the small N(0, 0.001) init: the original picks it by ``out_channels == 48``, i.e. only at x4.
    """

    def __init__(self, scale: int = 4, in_channels: int = 3, num_feat: int = 6, clamp_output: bool = False) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f'ELSR scale must be a positive integer, got {scale}')
        self.scale = scale
        self.clamp_output = clamp_output
        self.layer1 = nn.Conv2d(in_channels, num_feat, 3, padding=1)
        self.layer2_4 = ELSRResBlock(num_feat)
        self.layer5 = nn.Conv2d(num_feat, in_channels * scale * scale, 3, padding=1)
        self.layer6 = nn.PixelShuffle(scale)
        self._init_weights()

    def _init_weights(self) -> None:
        for conv in (self.layer1, self.layer2_4.conv1, self.layer2_4.conv2):
            fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(conv.bias)
        # A near-zero last layer starts the network close to a flat output, as the original does at x4.
        nn.init.normal_(self.layer5.weight, 0.0, 0.001)
        nn.init.zeros_(self.layer5.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) LR in [0, 1] → (B, C, scale·H, scale·W)."""
        out = self.layer6(self.layer5(self.layer2_4(self.layer1(x))))
        return out.clamp(0, 1) if self.clamp_output else out


def _infer(s: dict[str, torch.Tensor]) -> dict:
    num_feat, in_channels = s['layer1.weight'].shape[:2]
    return {'in_channels': in_channels, 'num_feat': num_feat,
            'scale': scale_from_channels(s['layer5.weight'].shape[0], in_channels, 'layer5.weight')}


register_spec(ArchSpec(
    'ELSR', present=('layer1.weight', 'layer2_4.conv1.weight', 'layer2_4.prelu.weight', 'layer5.weight'),
    infer=_infer, io=lambda o: single_frame_io(o['in_channels'], o['in_channels'], o['scale']),
    notes='clamp_output keeps its default (False) unless given'))
