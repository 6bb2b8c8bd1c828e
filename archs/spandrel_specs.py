"""Users' image checkpoints that vsrkit has no spec for, through spandrel (MIT; ESRGAN/RRDBNet in both key
layouts, Real-ESRGAN Compact, SwinIR, Swin2SR, HAT, DAT, OmniSR, SPAN, RealCUGAN, ...).

The generic loader (:mod:`vsrkit.archs.loader`) asks :func:`load_spandrel` only when none of vsrkit's own specs
recognises a checkpoint and neither ``--arch`` nor ``--opt`` names one: vsrkit's specs (its archs, every video
arch, basicsr's) take precedence. A spandrel descriptor becomes the same ``(network, info)`` pair the loader
returns for its own specs, with a :class:`~vsrkit.archs.spec.ModelIO` made from the descriptor:

- single frame; 3 input channels are RGB, 1 grey; spandrel's ``scale``;
- ``multiple`` / ``min_size`` from its ``size_requirements`` (the tiler pads to them; a square requirement is
  met by the descriptor's own padding, which :class:`SpandrelNetwork` calls);
- ``dtypes`` from its ``supports_bfloat16`` / ``supports_half`` flags;
- ``cost`` 'local': spandrel marks no architecture as quadratic in pixels (its ``tiling`` hint says where tiling
  is discouraged, kept in ``info['options']['tiling']``).
"""
from __future__ import annotations

from typing import Any

import torch
from spandrel import MAIN_REGISTRY, ImageModelDescriptor, ModelTiling, UnsupportedModelError, canonicalize_state_dict
from torch import nn

from vsrkit.archs.spec import ModelIO, StateDict

__all__ = ['SpandrelNetwork', 'load_spandrel', 'spandrel_architectures', 'spandrel_io']


class SpandrelNetwork(nn.Module):
    """A spandrel descriptor as a module: (n, C, h, w) in [0, 1] → (n, C', h·s, w·s), padded to the
    descriptor's size requirements and clamped as spandrel's own call does."""

    def __init__(self, descriptor: ImageModelDescriptor) -> None:
        super().__init__()
        self.descriptor = descriptor
        self.model = descriptor.model  # registered, so .to() / .eval() / parameters() reach it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.descriptor(x)


def spandrel_architectures() -> list[str]:
    """Names of the architectures spandrel recognises."""
    return sorted(support.architecture.name for support in MAIN_REGISTRY.architectures())


def spandrel_io(descriptor: ImageModelDescriptor) -> ModelIO:
    """The ModelIO of a spandrel image descriptor (module docstring)."""
    req = descriptor.size_requirements
    dtypes = ('bf16',) * descriptor.supports_bfloat16 + ('fp16',) * descriptor.supports_half
    channels = descriptor.input_channels
    return ModelIO('frame', 'rgb' if channels == 3 else 'grey', channels, descriptor.output_channels,
                   descriptor.scale, multiple=max(1, req.multiple_of), min_size=max(1, req.minimum), cost='local',
                   dtypes=dtypes)


def load_spandrel(state: StateDict, source: str) -> tuple[nn.Module, dict[str, Any]] | None:
    """(network, info) for a state dict that spandrel recognises (info as the loader's: 'arch', 'options', 'io',
    'source' = 'spandrel'), None when it recognises none. ValueError when it is a kind vsrkit cannot run."""
    try:
        descriptor = MAIN_REGISTRY.load(canonicalize_state_dict(dict(state)))
    except UnsupportedModelError:
        return None
    except (KeyError, ValueError, RuntimeError, AssertionError) as err:
        reason = ' '.join(str(err).split())[:300]  # load_state_dict lists every tensor: the first ones say enough
        raise ValueError(f'{source}: spandrel took it for one of its architectures but cannot load it: {reason}'
                         ) from None
    name = descriptor.architecture.name
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ValueError(f'{source}: a {name} network ({descriptor.purpose}); vsrkit runs image-to-image networks '
                         'only')
    if descriptor.input_channels not in (1, 3):
        raise ValueError(f'{source}: a {name} network with {descriptor.input_channels} input channels; vsrkit feeds '
                         '3 (RGB) or 1 (grey)')
    options = {'tags': list(descriptor.tags), 'tiling': ModelTiling(descriptor.tiling).name.lower(),
               'purpose': descriptor.purpose}
    return (SpandrelNetwork(descriptor).eval(),
            {'arch': f'{name} (spandrel)', 'options': options, 'io': spandrel_io(descriptor), 'source': 'spandrel'})
