"""Specs (:class:`vsrkit.archs.spec.ArchSpec`) of basicsr's own architectures that people train with vsrkit.

basicsr's classes are used as they are (registered by ``import basicsr.archs``); only their descriptions live
here, so that a checkpoint trained by vsrkit's loop, by basicsr or released with these networks is recognised,
rebuilt with the hyper-parameters its shapes fix, and fed the right frames:

================  ===========================================================================  ==================
architecture      inferred from shapes                                                         fed
================  ===========================================================================  ==================
MSRResNet         num_in_ch, num_out_ch, num_feat, num_block, upscale (2, 3, 4)                frame
EDSR              num_in_ch, num_out_ch, num_feat, num_block, upscale (2^n, 3)                 frame
RRDBNet           num_in_ch, num_out_ch, num_feat, num_block, num_grow_ch, scale (1, 2, 4)     frame
SRVGGNetCompact   num_in_ch, num_out_ch, num_feat, num_conv, upscale, act_type                 frame
SwinIR            in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, img_size,    frame (multiple of
                  upscale, upsampler, resi_connection, patch_norm, ape, qkv_bias               the window)
BasicVSR          num_feat, num_block                                                          recurrent clip
IconVSR           num_feat, num_block, temporal_padding                                        recurrent clip
EDVR              num_in_ch, num_out_ch, num_feat, num_frame, deformable_groups, block counts,  sliding window
                  with_tsa, with_predeblur, hr_in (with predeblur only)
================  ===========================================================================  ==================

What shapes cannot tell keeps basicsr's default unless given: EDSR's ``res_scale`` / ``img_range`` /
``rgb_mean``, SwinIR's ``img_range`` and ``patch_size`` (1), IconVSR's ``keyframe_stride``, EDVR's
``center_frame_idx``; SRVGGNetCompact without PReLU weights is taken as ``act_type='relu'`` (relu and leakyrelu
hold no weights: give ``leakyrelu`` if it was trained so). RRDBNet at scale 1 / 2 (pixel-unshuffled input) is
assumed to have as many input as output channels. ESRGAN's original names (``RRDB_trunk.N.RDBk``,
``trunk_conv``, ``upconv1``, ``HRconv``, e.g. ``RRDB_ESRGAN_x4.pth``) are renamed to basicsr's by the RRDBNet
spec's ``remap``.
"""
from __future__ import annotations

import math
import re
from typing import Any

from vsrkit.archs.spec import ArchSpec, ModelIO, StateDict, count_indices, register_spec, scale_from_channels, \
    single_frame_io


def _pixelshuffle_scale(s: StateDict, prefix: str, num_feat: int) -> int:
    """Factor of basicsr's ``Upsample`` (conv 4·F + PixelShuffle(2) per doubling, or one conv 9·F for x3)."""
    convs = count_indices(s, rf'{re.escape(prefix)}\.(\d+)\.weight')
    if convs == 1 and s[f'{prefix}.0.weight'].shape[0] == 9 * num_feat:
        return 3
    return 2 ** convs


# ------------------------------------------------------------------------------------------------ MSRResNet
def _msrresnet(s: StateDict) -> dict[str, Any]:
    num_feat, num_in_ch = s['conv_first.weight'].shape[:2]
    upscale = 4 if 'upconv2.weight' in s else scale_from_channels(s['upconv1.weight'].shape[0], num_feat,
                                                                   'upconv1.weight')
    return {'num_in_ch': num_in_ch, 'num_out_ch': s['conv_last.weight'].shape[0], 'num_feat': num_feat,
            'num_block': count_indices(s, r'body\.(\d+)\.conv1\.weight'), 'upscale': upscale}


register_spec(ArchSpec(
    'MSRResNet', present=('conv_first.weight', 'body.0.conv1.weight', 'upconv1.weight', 'conv_hr.weight',
                          'conv_last.weight'),
    infer=_msrresnet, io=lambda o: single_frame_io(o['num_in_ch'], o['num_out_ch'], o['upscale'])))


# ----------------------------------------------------------------------------------------------------- EDSR
def _edsr(s: StateDict) -> dict[str, Any]:
    num_feat, num_in_ch = s['conv_first.weight'].shape[:2]
    return {'num_in_ch': num_in_ch, 'num_out_ch': s['conv_last.weight'].shape[0], 'num_feat': num_feat,
            'num_block': count_indices(s, r'body\.(\d+)\.conv1\.weight'),
            'upscale': _pixelshuffle_scale(s, 'upsample', num_feat)}


register_spec(ArchSpec(
    'EDSR', present=('conv_first.weight', 'body.0.conv1.weight', 'conv_after_body.weight', 'upsample.0.weight',
                     'conv_last.weight'),
    infer=_edsr, io=lambda o: single_frame_io(o['num_in_ch'], o['num_out_ch'], o['upscale']),
    notes='res_scale, img_range and rgb_mean keep their defaults unless given'))


# -------------------------------------------------------------------------------------------------- RRDBNet
# Scale 1 and 2 pixel-unshuffle the input (x4 and x2 fewer pixels, 16 and 4 times the channels).
_RRDB_UNSHUFFLE = {1: 4, 4: 2, 16: 1}  # conv_first input channels / output channels -> scale


def _rrdbnet(s: StateDict) -> dict[str, Any]:
    num_feat, first_in = s['conv_first.weight'].shape[:2]
    num_out_ch = s['conv_last.weight'].shape[0]
    ratio = first_in // num_out_ch
    if first_in % num_out_ch or ratio not in _RRDB_UNSHUFFLE:
        raise ValueError(f'conv_first.weight takes {first_in} channels, conv_last.weight gives {num_out_ch}: '
                         'not the same channels in and out at scale 4, 2 or 1')
    scale = _RRDB_UNSHUFFLE[ratio]
    return {'num_in_ch': num_out_ch, 'num_out_ch': num_out_ch, 'scale': scale, 'num_feat': num_feat,
            'num_block': count_indices(s, r'body\.(\d+)\.rdb1\.conv1\.weight'),
            'num_grow_ch': s['body.0.rdb1.conv1.weight'].shape[0]}


_ESRGAN_NAMES = (  # ESRGAN's original module names -> basicsr's
    (re.compile(r'^RRDB_trunk\.(\d+)\.RDB(\d)\.'), r'body.\1.rdb\2.'), (re.compile(r'^trunk_conv\.'), 'conv_body.'),
    (re.compile(r'^upconv1\.'), 'conv_up1.'), (re.compile(r'^upconv2\.'), 'conv_up2.'),
    (re.compile(r'^HRconv\.'), 'conv_hr.'))


def _esrgan_remap(s: StateDict) -> StateDict:
    if not any(k.startswith('RRDB_trunk.') for k in s):
        return s

    def rename(key: str) -> str:
        for rx, new in _ESRGAN_NAMES:
            key = rx.sub(new, key)
        return key
    return {rename(k): v for k, v in s.items()}


def _rrdb_io(o: dict[str, Any]) -> ModelIO:
    # pixel_unshuffle needs sides divisible by its factor: 4 at scale 1, 2 at scale 2.
    return single_frame_io(o['num_in_ch'], o['num_out_ch'], o['scale'], multiple={1: 4, 2: 2}.get(o['scale'], 1))


register_spec(ArchSpec(
    'RRDBNet', present=('conv_first.weight', 'body.0.rdb1.conv1.weight', 'conv_body.weight', 'conv_up1.weight',
                        'conv_last.weight'),
    infer=_rrdbnet, io=_rrdb_io, remap=_esrgan_remap))


# ---------------------------------------------------------------------------------------- SRVGGNetCompact
def _srvgg(s: StateDict) -> dict[str, Any]:
    convs = sorted(int(m.group(1)) for k, v in s.items() if (m := re.fullmatch(r'body\.(\d+)\.weight', k))
                   and v.dim() == 4)
    num_feat, num_in_ch = s['body.0.weight'].shape[:2]
    last = f'body.{convs[-1]}.weight'
    return {'num_in_ch': num_in_ch, 'num_out_ch': num_in_ch, 'num_feat': num_feat, 'num_conv': len(convs) - 2,
            'upscale': scale_from_channels(s[last].shape[0], num_in_ch, last),
            'act_type': 'prelu' if 'body.1.weight' in s else 'relu'}


register_spec(ArchSpec(
    # Convs at the even indices of body (activations between them): body.0 and body.2 are convs at any depth.
    'SRVGGNetCompact', present=('body.0.weight', 'body.0.bias', 'body.2.weight'), absent=('conv_first.weight',),
    infer=_srvgg,
    io=lambda o: single_frame_io(o['num_in_ch'], o['num_out_ch'], o['upscale']),
    notes='num_out_ch is taken equal to num_in_ch; without PReLU weights act_type is relu unless given'))


# --------------------------------------------------------------------------------------------------- SwinIR
def _swinir(s: StateDict) -> dict[str, Any]:
    embed_dim, in_chans = s['conv_first.weight'].shape[:2]
    groups = count_indices(s, r'layers\.(\d+)\.residual_group\.')
    depths = [count_indices(s, rf'layers\.{g}\.residual_group\.blocks\.(\d+)\.') for g in range(groups)]
    tables = [s[f'layers.{g}.residual_group.blocks.0.attn.relative_position_bias_table'] for g in range(groups)]
    window = (math.isqrt(tables[0].shape[0]) + 1) // 2  # (2w - 1)² rows
    if (2 * window - 1) ** 2 != tables[0].shape[0]:
        raise ValueError(f'relative_position_bias_table with {tables[0].shape[0]} rows fits no square window')
    options = {'in_chans': in_chans, 'embed_dim': embed_dim, 'depths': depths,
               'num_heads': [t.shape[1] for t in tables], 'window_size': window,
               'mlp_ratio': s['layers.0.residual_group.blocks.0.mlp.fc1.weight'].shape[0] / embed_dim,
               'patch_norm': 'patch_embed.norm.weight' in s, 'ape': 'absolute_pos_embed' in s,
               'qkv_bias': 'layers.0.residual_group.blocks.0.attn.qkv.bias' in s,
               'resi_connection': '1conv' if 'conv_after_body.weight' in s else '3conv'}
    # img_size (the training patch) shapes the shifted blocks' attention-mask buffers: (windows, w², w²).
    masks = [v for k, v in s.items() if k.endswith('.attn_mask')]
    if masks:
        options['img_size'] = math.isqrt(masks[0].shape[0]) * window
    elif max(depths) > 1:  # shifted blocks without a mask: basicsr shrank the window to the whole image
        options['img_size'] = window
    if 'absolute_pos_embed' in s:
        options['img_size'] = math.isqrt(s['absolute_pos_embed'].shape[1])
    if 'conv_up1.weight' in s:
        options.update(upsampler='nearest+conv', upscale=4)
    elif 'conv_before_upsample.0.weight' in s:
        num_feat = s['conv_before_upsample.0.weight'].shape[0]
        options.update(upsampler='pixelshuffle', upscale=_pixelshuffle_scale(s, 'upsample', num_feat))
    elif 'upsample.0.weight' in s:
        options.update(upsampler='pixelshuffledirect',
                       upscale=scale_from_channels(s['upsample.0.weight'].shape[0], in_chans, 'upsample.0.weight'))
    else:  # denoising / JPEG artefact removal: same size out
        options.update(upsampler='', upscale=1)
    return options


def _swinir_io(o: dict[str, Any]) -> ModelIO:
    scale = o['upscale'] if o['upsampler'] else 1
    # basicsr's SwinIR does not pad: sides must be multiples of the window (the caller pads and crops). Not fp16: its
    # attention overflows in half precision (spandrel's SwinIR descriptor says supports_half=False for the same class).
    return single_frame_io(o['in_chans'], o['in_chans'], scale, multiple=o['window_size'], train_size=o['img_size'],
                           dtypes=('bf16',))


register_spec(ArchSpec(
    'SwinIR', present=('conv_first.weight', 'layers.0.residual_group.blocks.0.attn.relative_position_bias_table',
                       'norm.weight'),
    infer=_swinir, io=_swinir_io, notes='img_range and patch_size keep their defaults unless given'))


# ------------------------------------------------------------------------------------------ BasicVSR / IconVSR
def _basicvsr(s: StateDict) -> dict[str, Any]:
    return {'num_feat': s['backward_trunk.main.0.weight'].shape[0],
            'num_block': count_indices(s, r'backward_trunk\.main\.2\.(\d+)\.conv1\.weight')}


def _iconvsr(s: StateDict) -> dict[str, Any]:
    num_frame = s['edvr.fusion.feat_fusion.weight'].shape[1] // s['backward_trunk.main.0.weight'].shape[0]
    if num_frame not in (5, 7):  # basicsr's get_keyframe_feature pads for temporal_padding 2 or 3 only
        raise ValueError(f'edvr.fusion.feat_fusion.weight fuses {num_frame} frames; basicsr\'s IconVSR runs with 5 '
                         'or 7 (temporal_padding 2 or 3): any other count fails in its first forward')
    return {**_basicvsr(s), 'temporal_padding': num_frame // 2}


# SpyNet works on at least 64-px frames (smaller ones are padded by the caller).
register_spec(ArchSpec(
    'BasicVSR', present=('backward_trunk.main.0.weight', 'forward_trunk.main.0.weight', 'fusion.weight',
                         'spynet.basic_module.0.basic_module.0.weight'),
    infer=_basicvsr,
    io=lambda o: ModelIO('clip', 'rgb', 3, 3, 4, min_size=64)))
register_spec(ArchSpec(
    'IconVSR', present=('edvr.conv_first.weight', 'backward_fusion.weight', 'backward_trunk.main.0.weight'),
    infer=_iconvsr, io=lambda o: ModelIO('clip', 'rgb', 3, 3, 4, multiple=4, min_size=64),
    notes='keyframe_stride keeps its default (5) unless given'))


# ----------------------------------------------------------------------------------------------------- EDVR
def _edvr(s: StateDict) -> dict[str, Any]:
    predeblur = 'predeblur.conv_first.weight' in s
    first = s['predeblur.conv_first.weight' if predeblur else 'conv_first.weight']
    num_feat = first.shape[0]
    tsa = 'fusion.feat_fusion.weight' in s
    fusion_in = s['fusion.feat_fusion.weight' if tsa else 'fusion.weight'].shape[1]
    return {'num_in_ch': first.shape[1], 'num_out_ch': s['conv_last.weight'].shape[0], 'num_feat': num_feat,
            'num_frame': fusion_in // num_feat,
            'deformable_groups': s['pcd_align.dcn_pack.l1.conv_offset.weight'].shape[0] // 27,  # 3·3x3 per group
            'num_extract_block': count_indices(s, r'feature_extraction\.(\d+)\.conv1\.weight'),
            'num_reconstruct_block': count_indices(s, r'reconstruction\.(\d+)\.conv1\.weight'),
            'hr_in': 'predeblur.stride_conv_hr1.weight' in s, 'with_predeblur': predeblur, 'with_tsa': tsa}


def _edvr_io(o: dict[str, Any]) -> ModelIO:
    # Three pyramid levels (x4 down); HR input is strided twice more on top.
    hr_in = o['hr_in']
    return ModelIO('window', 'rgb', o['num_in_ch'], o['num_out_ch'], 1 if hr_in else 4,
                   multiple=16 if hr_in else 4, window=o['num_frame'])


register_spec(ArchSpec(
    'EDVR', present=('pcd_align.dcn_pack.l1.conv_offset.weight', 'conv_last.weight'), infer=_edvr, io=_edvr_io,
    notes='center_frame_idx keeps its default (the middle frame) unless given'))
