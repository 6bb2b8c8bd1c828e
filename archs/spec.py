"""What vsrkit knows about one architecture, in one place beside its class: :class:`ArchSpec`.

Each architecture file ends with one ``register_spec(ArchSpec(...))`` next to its class (basicsr's own archs that
people train with vsrkit have theirs in ``basicsr_specs.py``). A spec says

- how to recognise a state dict of the architecture (``present`` keys all there, ``absent`` keys all missing; the
  specs are mutually exclusive: :func:`matching_specs` returning two is a bug in the specs, not a guess),
- how to infer constructor arguments from the tensors' shapes (``infer``),
- how the network is fed (``io``: a :class:`ModelIO` computed from the full constructor options),
- and, where an original checkpoint names its tensors differently, how to rename them (``remap``), so that
  modules need not be bent to match an original's names.

The generic loader (:mod:`vsrkit.archs.loader`: detect → build → load strictly) and everything above it —
training's ``pretrain_network_g``, video upscaling, image and video evaluation, export — read only specs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

StateDict = dict[str, torch.Tensor]

TEMPORAL = ('frame', 'window', 'clip')
COLORS = ('rgb', 'grey', 'y_bicubic')
COSTS = ('local', 'global')  # 'global': attention over the whole input, time and memory quadratic in pixels


@dataclass(frozen=True)
class ModelIO:
    """How frames go into a network and come out.

    Attributes:
        temporal: 'frame' (one frame in, one out: batched), 'window' (``window`` neighbouring frames in, the
            centre frame out: (n, window, C, h, w) -> (n, C, H, W)) or 'clip' (recurrent: (n, t, C, h, w) ->
            (n, t, C, H, W), run over overlapping temporal chunks).
        color: 'rgb', 'grey' (luma in, e.g. 1-channel networks) or 'y_bicubic' (VDSR: the Y channel of the
            bicubic-upscaled frame in, refined Y out, recombined with the bicubic Cb/Cr).
        in_channels / out_channels: 3 (RGB) or 1 (grey / Y).
        scale: spatial factor of the network's output over its input (VDSR: 1; the caller's scale applies).
        multiple: height and width must be multiples of this (inputs are padded, outputs cropped).
        min_size: smallest height/width the network accepts (smaller inputs are padded).
        window: frames per window for temporal == 'window'.
        cost: 'local' (convolutions, windowed attention: time linear in pixels) or 'global' (attention over
            every pixel: quadratic; callers tile large frames, near ``train_size``).
        dtypes: the autocast dtypes the network tolerates besides fp32 ('bf16', 'fp16').
        amx_dtype: what ``--dtype auto`` runs it in on a CPU with AMX (vsrkit.utils.precision.auto_dtype): 'bf16'
            where measured faster than fp32 there, 'fp32' otherwise (unmeasured, or slower: ELSR's few channels
            took 0.69x fp32's speed under bf16 autocast, benchmarks/tiny_models.py).
        train_size: the LR patch size the network was trained on, when known (tiling hint for 'global' cost).
    """

    temporal: str
    color: str
    in_channels: int
    out_channels: int
    scale: int
    multiple: int = 1
    min_size: int = 1
    window: int = 1
    cost: str = 'local'
    dtypes: tuple[str, ...] = ('bf16', 'fp16')
    train_size: int | None = None
    amx_dtype: str = 'fp32'

    def __post_init__(self) -> None:
        for name, value, allowed in (('temporal', self.temporal, TEMPORAL), ('color', self.color, COLORS),
                                     ('cost', self.cost, COSTS), ('amx_dtype', self.amx_dtype, ('fp32',) + self.dtypes)):
            if value not in allowed:
                raise ValueError(f'ModelIO.{name}: expected one of {allowed}, got {value!r}')

    def describe(self) -> str:
        kind = {'frame': 'single frame', 'window': f'sliding window of {self.window} frames',
                'clip': 'recurrent clip'}[self.temporal]
        color = {'rgb': 'RGB', 'grey': 'grey', 'y_bicubic': 'Y channel of the bicubic upscale'}[self.color]
        return f'{kind}, {color} {self.in_channels}->{self.out_channels} channels, x{self.scale}'


def single_frame_io(in_channels: int, out_channels: int, scale: int, **extra: Any) -> ModelIO:
    """The ModelIO of a plain single-frame network: ``in_channels`` in (3: RGB, 1: grey), x ``scale``."""
    if in_channels not in (1, 3):
        raise ValueError(f'a single-frame network takes 3 (RGB) or 1 (grey) channels, this one {in_channels}')
    return ModelIO('frame', 'rgb' if in_channels == 3 else 'grey', int(in_channels), int(out_channels), int(scale),
                   **extra)


# ----------------------------------------------------------------- helpers for the specs' ``infer`` functions
def count_indices(state: StateDict, pattern: str) -> int:
    """Number of distinct integers N for which some key matches ``pattern`` (a regex with one (\\d+) group):
    the length of an ``nn.Sequential`` / ``nn.ModuleList`` from its keys."""
    rx = re.compile(pattern)
    return len({int(m.group(1)) for k in state if (m := rx.match(k))})


def scale_from_channels(out_channels: int, in_channels: int, key: str) -> int:
    """The factor of a PixelShuffle fed by a conv with ``out_channels`` = ``in_channels`` x scale²."""
    scale = math.isqrt(out_channels // in_channels)
    if scale * scale * in_channels != out_channels:
        raise ValueError(f'{key}: {out_channels} output channels is not {in_channels} x scale^2 for any scale')
    return scale


@dataclass(frozen=True)
class ArchSpec:
    """One architecture's description (module docstring).

    Attributes:
        name: the registered architecture name (``ARCH_REGISTRY``).
        present / absent: keys that must all be present / all be absent in a state dict of this architecture
            (after ``remap``).
        infer: state dict -> constructor options that the shapes determine.
        io: full constructor options (defaults filled in) -> :class:`ModelIO`.
        remap: an original checkpoint's state dict -> vsrkit's names (identity when None); applied before
            detection and loading.
        notes: what shapes cannot tell (options that keep their default unless given).
    """

    name: str
    present: tuple[str, ...]
    infer: Callable[[StateDict], dict[str, Any]]
    io: Callable[[dict[str, Any]], ModelIO]
    absent: tuple[str, ...] = ()
    remap: Callable[[StateDict], StateDict] | None = None
    notes: str = ''

    def matches(self, state: StateDict) -> bool:
        return all(k in state for k in self.present) and not any(k in state for k in self.absent)

    def remapped(self, state: StateDict) -> StateDict:
        return self.remap(state) if self.remap is not None else state


ARCH_SPECS: dict[str, ArchSpec] = {}


def register_spec(spec: ArchSpec) -> ArchSpec:
    """Add ``spec`` to :data:`ARCH_SPECS`. The same module registering again (a reload) replaces its spec; a spec
    from another module under a taken name raises."""
    known = ARCH_SPECS.get(spec.name)
    if known is not None and known.infer.__module__ != spec.infer.__module__:
        raise ValueError(f'a spec for {spec.name!r} is already registered by {known.infer.__module__}')
    ARCH_SPECS[spec.name] = spec
    return spec


def matching_specs(state: StateDict) -> list[ArchSpec]:
    """Every registered spec whose key signature fits ``state`` (its own remap applied first)."""
    return [spec for spec in ARCH_SPECS.values() if spec.matches(spec.remapped(state))]
