"""MIA-VSR: video super-resolution transformer with masked inter&intra-frame attention (CVPR 2024).

Zhou et al., arXiv 2401.06312; original code LabShuHangGU/MIA-VSR. Parameter and buffer names match the
official checkpoints (strict=True load); the building blocks live in ``vsrkit.archs.mia_*``
(window layout, mask, attention, block, network).

Bugs of the original fixed here (each has a test in tests/archs/test_miavsr_arch.py):
(a) gradient checkpointing is optional (``use_checkpoint``) and correct: the original always checkpoints and
    its block pops/appends a shared Python list of previous-frame states, so the recomputation in backward
    reads another block's state and the gradients differ from the non-checkpointed run. Here a block takes
    its previous state as an argument and returns the new one.
(c) the mirror-extension test (which reuses backward flows as forward flows) is made per forward call; the
    original sets an instance flag and never resets it, so every later clip used flipped backward flows.
(d) builds and runs on CPU: the original silently skipped building the transformer branches without CUDA
    and hard-coded ``.cuda()`` in the attention.
(e) batch size > 1 at inference (the original flattens the batch into one token list), and the mask's
    saving is realised: in eval mode tokens that are not kept skip the MLP and, in a block keeping less than half
    of its tokens, the query projection, the attention and the output projection (gather/scatter); the original
    computed q/k/v, attention and MLP for all tokens. By default only where that was measured faster: on the CPU,
    under CPU autocast for the MLP only (``sparse_inference``, below).
Also: LR frames of any size (smaller than 64 px are padded for SpyNet, the output is cropped); SpyNet is
never downloaded.
"""
from __future__ import annotations

from typing import Any, Sequence

from vsrkit.archs.mia_network import RecurrentInterIntraVSR
from vsrkit.archs.spec import ArchSpec, ModelIO, StateDict, count_indices, register_spec
from vsrkit.utils.registry import ARCH_REGISTRY, register


@register(ARCH_REGISTRY)
class MIAVSR(RecurrentInterIntraVSR):
    """MIA-VSR network (x4).

    Args:
        in_channels: image channels.
        mid_channels: width of the reconstruction head (and of the checkpoint-only convs of each branch).
        embed_dim: token width of the transformer branches.
        depths: blocks per residual group of each branch.
        num_heads: attention heads per residual group.
        window_size: (frames, height, width) of an attention window; frames must equal num_frames (3).
        num_frames: frames seen by a block (current + two aligned previous outputs); must be 3.
        patch_size: must be 1 (every LR pixel is a token), kept for the original's option files.
        mlp_ratio: MLP hidden width / embed_dim.
        drop_path_rate: stochastic depth, linearly increasing over the blocks of a branch.
        is_low_res_input: must be True (the original's HR-input path is broken).
        use_mask: apply the adaptive mask; also a runtime attribute (``model.use_mask = False`` computes every
            token, for comparison).
        gumbel_noise: logistic noise in the training-mode Gumbel-sigmoid; runtime attribute as well.
        mask_temperature: Gumbel-sigmoid temperature.
        spynet_path: optional BasicSR SpyNet weights file; None leaves SpyNet randomly initialised.
        use_checkpoint: recompute each block in backward (memory for time; same gradients).
        skip: upscaling added to the reconstruction: 'bilinear' (the original; checkpoints expect it) or
            'bicubic' (the last conv then starts at zero, so an untrained net outputs bicubic upscaling).

    Runtime attributes: ``sparse_inference`` (True: in eval only the kept tokens go through the MLP, and through
    the attention where a block keeps less than ``mia_block.GATHERED_BELOW`` (50%) of them, above that computing
    every token's attention and selecting is cheaper; False always computes all tokens and selects, the dense
    reference; None, the default: sparse where it pays, on the CPU (under CPU autocast in the shapes of
    ``mia_block.gather_shapes``), and dense on CUDA, as measured: ``mia_network.sparse_pays``),
    ``forced_keep_ratio`` (None, or a fraction: in eval keep that share of each sample's tokens with the highest
    logits, e.g. to benchmark untrained weights).

    forward(lqs, return_keep_ratios=False): lqs (n, t, C, h, w) -> (n, t, C, 4h, 4w); with
    ``return_keep_ratios=True`` also a (4 branches, t-1 frames, blocks) tensor of keep ratios (None when the
    mask is off or t == 1), the input of ``vsrkit.losses.sparsity_loss.SparsityLoss``.
    """

    def __init__(self, in_channels: int = 3, mid_channels: int = 64, embed_dim: int = 120,
                 depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: Sequence[int] = (3, 8, 8), num_frames: int = 3, patch_size: int = 1,
                 mlp_ratio: float = 2.0, drop_path_rate: float = 0.1, is_low_res_input: bool = True,
                 use_mask: bool = True, gumbel_noise: bool = True, mask_temperature: float = 2 / 3,
                 spynet_path: str | None = None, use_checkpoint: bool = False,
                 skip: str = 'bilinear') -> None:
        super().__init__(in_channels, mid_channels, embed_dim, depths, num_heads, window_size, num_frames,
                         patch_size, mlp_ratio, drop_path_rate, is_low_res_input, with_mask_predictor=True,
                         use_mask=use_mask, gumbel_noise=gumbel_noise, mask_temperature=mask_temperature,
                         spynet_path=spynet_path, use_checkpoint=use_checkpoint, skip=skip)


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


def mia_options(s: StateDict) -> dict[str, Any]:
    """Constructor options of MIA-VSR and IIA-VSR (the same network body) from a state dict's shapes."""
    branch = 'patch_align.backward_1.layers'
    groups = count_indices(s, rf'{branch}\.(\d+)\.')
    depths = [count_indices(s, rf'{branch}\.{g}\.residual_group\.blocks\.(\d+)\.') for g in range(groups)]
    block0 = f'{branch}.0.residual_group.blocks.0'
    table = s[f'{block0}.attn.relative_position_bias_table']
    embed_dim = s['conv_first.weight'].shape[0]
    return {'in_channels': s['conv_first.weight'].shape[1], 'mid_channels': s['conv_before_upsample.weight'].shape[0],
            'embed_dim': embed_dim, 'depths': depths,
            'num_heads': [s[f'{branch}.{g}.residual_group.blocks.0.attn.relative_position_bias_table'].shape[1]
                          for g in range(groups)],
            'window_size': _window_size(table.shape[0], tuple(s[f'{block0}.attn.relative_position_index'].shape)),
            'mlp_ratio': s[f'{block0}.mlp.fc1.weight'].shape[0] / embed_dim}


def mia_io(options: dict[str, Any]) -> ModelIO:
    """Recurrent clips of RGB frames, x4; any frame size (SpyNet's 64-px minimum is padded inside). bf16 on an AMX
    CPU: 1.5x fp32's speed for a 1x5x3x64x64 clip, 65 dB against the fp32 output (benchmarks/miavsr_speed.py)."""
    return ModelIO('clip', 'rgb', options['in_channels'], options['in_channels'], 4, amx_dtype='bf16')


# The mask predictor's keys tell MIA-VSR from IIA-VSR (whose spec requires them absent).
MIA_MASK_KEY = 'patch_align.backward_1.layers.0.residual_group.blocks.0.attn.predmask.rnn.weight'

register_spec(ArchSpec(
    'MIAVSR', present=(MIA_MASK_KEY, 'conv_first.weight', 'spynet.basic_module.0.basic_module.0.weight'),
    infer=mia_options, io=mia_io,
    notes='mask options (use_mask, gumbel_noise, mask_temperature), drop_path_rate and skip keep their defaults '
          'unless given'))
