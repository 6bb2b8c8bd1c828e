"""Recognise the architecture of a checkpoint from its keys and shapes, build it and load it strictly.

``detect_architecture(state_dict_or_checkpoint) -> (arch_name, options)`` reads the parameter names and shapes
(through ``params`` / ``params_ema`` wrappers and ``module.`` prefixes, see
:func:`vsrkit.utils.checkpoint.extract_state_dict`) and infers the constructor arguments that shapes determine:

============================  ==========================================================================
ViTSR                         in_chans, embed_dim, mlp_dim, depth, scale, share_weights (tied layers)
ELSR                          scale, in_channels, num_feat
VDSR                          num_layers, widths (pruned networks: per-layer widths)
Grey2RGBAutoEncoder           channels, batch_norm (v3.0: with BatchNorm + LeakyReLU; head: ReLU)
ConvLSTM                      input_dim, hidden_dims, num_layers, kernel_size, stack_layers
MIAVSR / IIAVSR               in/mid channels, embed_dim, depths, num_heads, window_size, mlp_ratio
BasicVSR / IconVSR (basicsr)  num_feat, num_block (IconVSR: temporal_padding)
EDVR (basicsr)                num_in_ch, num_out_ch, num_feat, num_frame, deformable_groups, block counts,
                              with_tsa, with_predeblur, hr_in (with predeblur only)
============================  ==========================================================================

What shapes cannot tell keeps the constructor default and can be given as options: ViTSR's ``num_heads``
(the packed in-projection hides it; 4 as in the seed), ``window_size`` and ``residual``; ConvLSTM's ``alpha``;
IconVSR's ``keyframe_stride``; EDVR's ``center_frame_idx``. ``stack_layers`` of ConvLSTM is True only when the
shapes prove it (layer inputs of the previous layer's width differing from ``input_dim``); the activation of a
Grey2RGBAutoEncoder follows the two published releases (BatchNorm ⇒ LeakyReLU, none ⇒ ReLU).

``load_model(path, arch=None, options=None)`` builds the network and loads it with ``strict=True``. Precedence of
the options, lowest first: detected from shapes < the checkpoint's own ``network_g`` < ``options`` (a dict or an
options YAML whose ``network_g`` is used) / ``arch``. ``model_io(arch, options)`` describes how a video
upscaler must feed a network (:class:`ModelIO`).
"""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn

import basicsr.archs  # noqa: F401  (registers basicsr's architectures)
import vsrkit.archs  # noqa: F401  (registers vsrkit's)
from vsrkit.utils.checkpoint import extract_state_dict, load_file
from vsrkit.utils.legacy_checkpoint import vdsr_widths
from vsrkit.utils.registry import ARCH_REGISTRY

StateDict = dict[str, torch.Tensor]


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
        scale: spatial factor of the network's output over its input (VDSR: 1; the upscaler's --scale applies).
        multiple: height and width must be multiples of this (inputs are padded, outputs cropped).
        min_size: smallest height/width the network accepts (smaller inputs are padded).
        window: frames per window for temporal == 'window'.
    """

    temporal: str
    color: str
    in_channels: int
    out_channels: int
    scale: int
    multiple: int = 1
    min_size: int = 1
    window: int = 1

    def describe(self) -> str:
        kind = {'frame': 'single frame', 'window': f'sliding window of {self.window} frames',
                'clip': 'recurrent clip'}[self.temporal]
        color = {'rgb': 'RGB', 'grey': 'grey', 'y_bicubic': 'Y channel of the bicubic upscale'}[self.color]
        return f'{kind}, {color} {self.in_channels}->{self.out_channels} channels, x{self.scale}'


def _count(state: StateDict, pattern: str) -> int:
    """Number of distinct integers N for which some key matches ``pattern`` (a regex with one (\\d+) group)."""
    rx = re.compile(pattern)
    return len({int(m.group(1)) for k in state if (m := rx.match(k))})


def _scale_from(out_channels: int, in_channels: int, key: str) -> int:
    scale = math.isqrt(out_channels // in_channels)
    if scale * scale * in_channels != out_channels:
        raise ValueError(f'{key}: {out_channels} output channels is not in_channels x scale^2 for any scale')
    return scale


def _vitsr(s: StateDict) -> dict[str, Any]:
    depth = _count(s, r'transformer\.layers\.(\d+)\.')
    in_chans, embed_dim = s['patch_embed.weight'].shape[1], s['patch_embed.weight'].shape[0]
    layer_keys = [k[len('transformer.layers.0.'):] for k in s if k.startswith('transformer.layers.0.')]
    tied = all(torch.equal(s[f'transformer.layers.0.{k}'], s[f'transformer.layers.{i}.{k}'])
               for i in range(1, depth) for k in layer_keys)
    return {'in_chans': in_chans, 'embed_dim': embed_dim, 'depth': depth,
            'mlp_dim': s['transformer.layers.0.linear1.weight'].shape[0],
            'scale': _scale_from(s['upsample.0.weight'].shape[0], in_chans, 'upsample.0.weight'),
            'share_weights': tied}


def _elsr(s: StateDict) -> dict[str, Any]:
    num_feat, in_channels = s['layer1.weight'].shape[:2]
    return {'in_channels': in_channels, 'num_feat': num_feat,
            'scale': _scale_from(s['layer5.weight'].shape[0], in_channels, 'layer5.weight')}


def _vdsr(s: StateDict) -> dict[str, Any]:
    widths = vdsr_widths(s)
    return {'num_channels': max(widths), 'num_layers': len(widths) - 1, 'widths': widths}


def _grey2rgb(s: StateDict) -> dict[str, Any]:
    def out_channels(stage: str, transposed: bool) -> list[int]:
        convs = sorted(int(m.group(1)) for k in s if (m := re.match(rf'{stage}\.(\d+)\.weight$', k))
                       and s[k].dim() == 4)
        return [s[f'{stage}.{i}.weight'].shape[1 if transposed else 0] for i in convs]

    batch_norm = any(k.endswith('running_mean') for k in s)
    first = min((k for k in s if re.match(r'encoder\.\d+\.weight$', k)), key=lambda k: int(k.split('.')[1]))
    return {'in_channels': s[first].shape[1], 'encoder_channels': out_channels('encoder', False),
            'decoder_channels': out_channels('decoder', True), 'batch_norm': batch_norm,
            'activation': 'leaky_relu' if batch_norm else 'relu'}


def _convlstm(s: StateDict) -> dict[str, Any]:
    n = _count(s, r'cells\.(\d+)\.conv\.weight')
    weights = [s[f'cells.{i}.conv.weight'] for i in range(n)]
    hidden = [w.shape[0] // 4 for w in weights]
    inputs = [w.shape[1] - h for w, h in zip(weights, hidden)]
    stacked = n > 1 and inputs[1:] == hidden[:-1] and inputs[1:] != [inputs[0]] * (n - 1)
    return {'input_dim': inputs[0], 'hidden_dims': hidden, 'num_layers': n,
            'kernel_size': list(weights[0].shape[2:]), 'stack_layers': stacked}


def _window_size(table_rows: int, index_shape: tuple[int, int]) -> list[int]:
    """(frames, h, w) of a window from its relative-position table rows = t(2h-1)(2w-1) and index (h·w, t·h·w)."""
    queries, keys = index_shape
    frames = keys // queries
    candidates = [(h, queries // h) for h in range(1, queries + 1) if queries % h == 0
                  and frames * (2 * h - 1) * (2 * (queries // h) - 1) == table_rows]
    if not candidates:
        raise ValueError(f'relative_position_bias_table with {table_rows} rows fits no window of {queries} tokens')
    h, w = min(candidates, key=lambda hw: abs(hw[0] - hw[1]))  # the squarest (the published windows are square)
    return [frames, h, w]


def _mia(s: StateDict) -> dict[str, Any]:
    branch = 'patch_align.backward_1.layers'
    groups = _count(s, rf'{branch}\.(\d+)\.')
    depths = [_count(s, rf'{branch}\.{g}\.residual_group\.blocks\.(\d+)\.') for g in range(groups)]
    block0 = f'{branch}.0.residual_group.blocks.0'
    table = s[f'{block0}.attn.relative_position_bias_table']
    embed_dim = s['conv_first.weight'].shape[0]
    return {'in_channels': s['conv_first.weight'].shape[1], 'mid_channels': s['conv_before_upsample.weight'].shape[0],
            'embed_dim': embed_dim, 'depths': depths,
            'num_heads': [s[f'{branch}.{g}.residual_group.blocks.0.attn.relative_position_bias_table'].shape[1]
                          for g in range(groups)],
            'window_size': _window_size(table.shape[0], tuple(s[f'{block0}.attn.relative_position_index'].shape)),
            'mlp_ratio': s[f'{block0}.mlp.fc1.weight'].shape[0] / embed_dim}


def _basicvsr(s: StateDict) -> dict[str, Any]:
    return {'num_feat': s['backward_trunk.main.0.weight'].shape[0],
            'num_block': _count(s, r'backward_trunk\.main\.2\.(\d+)\.conv1\.weight')}


def _iconvsr(s: StateDict) -> dict[str, Any]:
    num_feat = s['backward_trunk.main.0.weight'].shape[0]
    num_frame = s['edvr.fusion.feat_fusion.weight'].shape[1] // num_feat
    return {**_basicvsr(s), 'temporal_padding': num_frame // 2}


def _edvr(s: StateDict) -> dict[str, Any]:
    predeblur = 'predeblur.conv_first.weight' in s
    first = s['predeblur.conv_first.weight' if predeblur else 'conv_first.weight']
    num_feat = first.shape[0]
    tsa = 'fusion.feat_fusion.weight' in s
    fusion_in = s['fusion.feat_fusion.weight' if tsa else 'fusion.weight'].shape[1]
    return {'num_in_ch': first.shape[1], 'num_out_ch': s['conv_last.weight'].shape[0], 'num_feat': num_feat,
            'num_frame': fusion_in // num_feat,
            'deformable_groups': s['pcd_align.dcn_pack.l1.conv_offset.weight'].shape[0] // 27,
            'num_extract_block': _count(s, r'feature_extraction\.(\d+)\.conv1\.weight'),
            'num_reconstruct_block': _count(s, r'reconstruction\.(\d+)\.conv1\.weight'),
            'hr_in': 'predeblur.stride_conv_hr1.weight' in s, 'with_predeblur': predeblur, 'with_tsa': tsa}


# (name, keys that must all be present, keys that must all be absent, options from shapes). Checked in order:
# the first match wins, so more specific signatures (IconVSR ⊃ BasicVSR keys, MIAVSR ⊃ IIAVSR) come first.
_SIGNATURES: list[tuple[str, tuple[str, ...], tuple[str, ...], Callable[[StateDict], dict[str, Any]]]] = [
    ('ViTSR', ('patch_embed.weight', 'transformer.layers.0.self_attn.in_proj_weight', 'upsample.0.weight'), (),
     _vitsr),
    ('ELSR', ('layer1.weight', 'layer2_4.conv1.weight', 'layer2_4.prelu.weight', 'layer5.weight'), (), _elsr),
    ('VDSR', ('input.weight', 'residual_layer.0.conv.weight', 'output.weight'), (), _vdsr),
    ('Grey2RGBAutoEncoder', ('encoder.0.weight', 'decoder.0.weight'), (), _grey2rgb),
    ('ConvLSTM', ('cells.0.conv.weight',), (), _convlstm),
    ('MIAVSR', ('patch_align.backward_1.layers.0.residual_group.blocks.0.attn.predmask.rnn.weight',
                'spynet.basic_module.0.basic_module.0.weight'), (), _mia),
    ('IIAVSR', ('patch_align.forward_2.layers.0.residual_group.blocks.0.attn.qkv.weight', 'conv_first.weight'),
     ('patch_align.backward_1.layers.0.residual_group.blocks.0.attn.predmask.rnn.weight',), _mia),
    ('IconVSR', ('edvr.conv_first.weight', 'backward_fusion.weight', 'backward_trunk.main.0.weight'), (),
     _iconvsr),
    ('BasicVSR', ('backward_trunk.main.0.weight', 'forward_trunk.main.0.weight', 'fusion.weight',
                  'spynet.basic_module.0.basic_module.0.weight'), (), _basicvsr),
    ('EDVR', ('pcd_align.dcn_pack.l1.conv_offset.weight', 'conv_last.weight'), (), _edvr),
]
SUPPORTED_ARCHS = tuple(name for name, *_ in _SIGNATURES)


def detect_architecture(state_dict_or_checkpoint: Any, source: str = 'checkpoint') -> tuple[str, dict[str, Any]]:
    """(architecture name, constructor options inferred from shapes) of a state dict, checkpoint dict or path.

    A checkpoint's ``network_g`` entry wins when present (its options over the detected ones, when it names the
    detected architecture). Raises ValueError listing the supported architectures when nothing matches."""
    checkpoint = state_dict_or_checkpoint
    if isinstance(checkpoint, (str, Path)):
        source, checkpoint = str(checkpoint), load_file(checkpoint)
    state = extract_state_dict(checkpoint, source=source)
    detected: tuple[str, dict[str, Any]] | None = None
    for name, present, absent, infer in _SIGNATURES:
        if all(k in state for k in present) and not any(k in state for k in absent):
            try:
                detected = name, infer(state)
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f'{source}: looks like {name} but its shapes do not fit: {err}') from None
            break
    network_g = checkpoint.get('network_g') if isinstance(checkpoint, dict) else None
    if isinstance(network_g, dict) and 'type' in network_g:
        base = detected[1] if detected and detected[0] == network_g['type'] else {}
        return network_g['type'], {**base, **{k: v for k, v in network_g.items() if k != 'type'}}
    if detected is None:
        sample = ', '.join(list(state)[:6])
        raise ValueError(f'{source}: unrecognised architecture (keys start {sample}, ...); supported: '
                         f'{", ".join(SUPPORTED_ARCHS)}. Give --arch/--opt for another registered network')
    return detected


def _arch_class(name: str) -> type[nn.Module]:
    if name not in ARCH_REGISTRY:
        raise KeyError(f"unknown architecture '{name}'; registered: {', '.join(sorted(ARCH_REGISTRY.keys()))}")
    return ARCH_REGISTRY.get(name)


def _explicit_options(options: dict[str, Any] | str | Path | None) -> dict[str, Any]:
    if options is None or isinstance(options, dict):
        return dict(options or {})
    opt = yaml.safe_load(Path(options).read_text(encoding='utf-8')) or {}
    if not isinstance(opt.get('network_g'), dict):
        raise KeyError(f'{options}: no network_g mapping')
    return dict(opt['network_g'])


def load_model(path: str | Path, arch: str | None = None, options: dict[str, Any] | str | Path | None = None,
               device: str | torch.device = 'cpu') -> tuple[nn.Module, dict[str, Any]]:
    """Build the network in checkpoint ``path`` and load it with ``strict=True`` (eval mode, on ``device``).

    ``arch`` / ``options`` (a network_g dict or an options YAML) override what the checkpoint says and what its
    shapes say (module docstring). Returns (network, info) with info = {'arch', 'options', 'io' (ModelIO),
    'source': where the architecture came from: 'shapes', 'network_g' (the checkpoint's) or 'options'}."""
    checkpoint = load_file(path)
    explicit = _explicit_options(options)
    name = arch or explicit.get('type')
    try:
        detected_name, detected = detect_architecture(checkpoint, source=str(path))
    except ValueError:
        if name is None:
            raise
        detected_name, detected = None, {}
    name = name or detected_name
    merged = {**(detected if detected_name == name else {}), **{k: v for k, v in explicit.items() if k != 'type'}}
    cls = _arch_class(name)
    try:
        net = cls(**merged)
        net.load_state_dict(extract_state_dict(checkpoint, source=str(path)), strict=True)
    except (TypeError, RuntimeError) as err:
        raise ValueError(f'{path}: cannot load as {name}({merged}): {err}') from None
    io = model_io(name, merged)
    has_network_g = isinstance(checkpoint, dict) and isinstance(checkpoint.get('network_g'), dict)
    source = 'options' if arch or explicit else 'network_g' if has_network_g else 'shapes'
    return net.to(device).eval(), {'arch': name, 'options': merged, 'io': io, 'source': source}


def model_io(arch: str, options: dict[str, Any]) -> ModelIO:
    """The :class:`ModelIO` of a registered architecture built with ``options`` (unset options: defaults)."""
    defaults = {k: p.default for k, p in inspect.signature(_arch_class(arch)).parameters.items()
                if p.default is not inspect.Parameter.empty}
    o = {**defaults, **options}
    if arch == 'ViTSR':
        c = o['in_chans']
        return ModelIO('frame', 'rgb' if c == 3 else 'grey', c, c, o['scale'])
    if arch == 'ELSR':
        c = o['in_channels']
        return ModelIO('frame', 'rgb' if c == 3 else 'grey', c, c, o['scale'])
    if arch == 'VDSR':
        return ModelIO('frame', 'y_bicubic', 1, 1, 1)
    if arch == 'Grey2RGBAutoEncoder':
        out = list(o['decoder_channels'])[-1]
        return ModelIO('frame', 'grey', o['in_channels'], out, 1)
    if arch == 'ConvLSTM':
        return ModelIO('clip', 'grey', o['input_dim'], list(o['hidden_dims'])[-1], 1)
    if arch in ('MIAVSR', 'IIAVSR'):
        return ModelIO('clip', 'rgb', o['in_channels'], o['in_channels'], 4)
    if arch == 'BasicVSR':
        return ModelIO('clip', 'rgb', 3, 3, 4, min_size=64)
    if arch == 'IconVSR':
        return ModelIO('clip', 'rgb', 3, 3, 4, multiple=4, min_size=64)
    if arch == 'EDVR':
        hr_in = o['hr_in']
        return ModelIO('window', 'rgb', o['num_in_ch'], o['num_out_ch'], 1 if hr_in else 4,
                       multiple=16 if hr_in else 4, window=o['num_frame'])
    raise ValueError(f'no video I/O description for architecture {arch!r}; described: {", ".join(SUPPORTED_ARCHS)}')
