"""The network shared by MIA-VSR (``MIAVSR``) and IIA-VSR (``IIAVSR``): :class:`RecurrentInterIntraVSR` and its
propagation branch :class:`PatchAlignTransformer`; registers nothing (the ``*_arch.py`` files do).

Layout of one propagation branch (the original's ``SwinIRFM``): the current frame's features and the two
flow-aligned previous ones (patch alignment, :func:`patch_flow_warp`) are layer-normed (``patch_embed.norm``),
then residual groups of :class:`~vsrkit.archs.mia_block.InterIntraBlock` update the *current* frame's tokens
only, in window rows (:class:`~vsrkit.archs.mia_window_layout.WindowLayout`; the picture is there).

How the function is arranged for speed (the CPU profile of a straightforward version was dominated by
copies: per-block rolls, pads, partitions, concatenations and gathers; see benchmarks/miavsr_speed.py):
- tokens stay in window rows through the blocks of a residual group; only the group's convolution sees the
  image layout;
- the two aligned frames, which every block of a step attends to, are normalised and partitioned once per
  step (each block's norm1 affine is folded into its projections);
- the folded weights and the attention masks (:meth:`PatchAlignTransformer.constants`) are derived once per
  forward call of a branch, never kept across calls (so they follow every change of the weights).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim before the basicsr import)
from basicsr.archs.arch_util import flow_warp
from basicsr.archs.spynet_arch import SpyNet
from vsrkit.archs.mia_attention import MIN_WINDOWS_PER_WORKER, WINDOW_CHUNK, BlockConstants, normalise
from vsrkit.archs.mia_block import BlockState, InterIntraBlock, ResidualGroup, residual_dtype
from vsrkit.archs.mia_mask import MaskControl
from vsrkit.archs.mia_window_layout import WindowLayout
from vsrkit.utils.chunk_workers import chunk_plan
from vsrkit.utils.cpu_load import OtherLoad, load_aware, threads_beside_load


def patch_flow_warp(x: torch.Tensor, flow: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Patch alignment: average the flow over each patch (reflect-padded to the patch multiple) and warp
    ``x`` (n, c, h, w) with nearest-neighbour sampling, so every patch moves as one piece."""
    h, w = flow.shape[-2:]
    padded = F.pad(flow, (0, (-w) % patch[1], 0, (-h) % patch[0]), mode='reflect')
    pooled = F.avg_pool2d(padded, patch)
    flow = pooled.repeat_interleave(patch[0], dim=2).repeat_interleave(patch[1], dim=3)[..., :h, :w]
    return flow_warp(x, flow.permute(0, 2, 3, 1), interp_mode='nearest', padding_mode='zeros', align_corners=True)



class _Norm(nn.Module):
    """Holds ``norm`` so that the name reads ``patch_embed.norm`` as in the checkpoints."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class PatchAlignTransformer(nn.Module):
    """One propagation branch (the original's ``SwinIRFM``): refines the current frame given two aligned ones.

    forward(frames, states, control, layout, constants, use_checkpoint) -> (features, new_states, keep_ratios)
      frames: (n, 3, C, h, w) = [aligned t-2, aligned t-1, current], or (n, 2, C, h, w) = [aligned, current]
      where one aligned frame stands for both (the original repeats it at a branch's first two steps: attending
      to it once with merged biases is the same function); states: one BlockState per block or None
      (first frame), consumed: its entries are set to None as the blocks replace them (a branch's states are
      ~2 GB at 180x320 LR: a second set alive would double the peak); constants: ``self.constants(layout)``,
      with one aligned frame their :meth:`BlockConstants.with_one_aligned_frame`; keep_ratios: one entry per block
      (None where no mask acted).

    ``conv_first``, ``conv_first_feat`` and ``conv_before_upsample`` exist only so that official checkpoints
    load with strict=True: the original applies them only to 3- or 64-channel inputs (never at embed_dim
    channels) or when a ``ref`` flag is set that MIA-VSR never sets. They are frozen (requires_grad=False).
    """

    def __init__(self, in_channels: int, mid_channels: int, embed_dim: int, depths: Sequence[int],
                 num_heads: Sequence[int], window_size: Sequence[int], mlp_ratio: float, drop_path_rate: float,
                 with_mask_predictor: bool) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f'depths {list(depths)} and num_heads {list(num_heads)} must have the same length')
        self.conv_first = nn.Conv2d(in_channels, embed_dim, 3, 1, 1)
        self.conv_first_feat = nn.Conv2d(mid_channels, embed_dim, 3, 1, 1)
        self.patch_embed = _Norm(embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        start = 0
        for depth, heads in zip(depths, num_heads):
            blocks = [InterIntraBlock(embed_dim, heads, window_size, shifted=i % 2 == 1, mlp_ratio=mlp_ratio,
                                      drop_path=rates[start + i], with_mask_predictor=with_mask_predictor)
                      for i in range(depth)]
            self.layers.append(ResidualGroup(blocks, embed_dim))
            start += depth
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_before_upsample = nn.Conv2d(embed_dim, mid_channels, 3, 1, 1)
        self.apply(_init_weights)
        for unused in (self.conv_first, self.conv_first_feat, self.conv_before_upsample):
            unused.requires_grad_(False)

    @property
    def num_blocks(self) -> int:
        return sum(len(layer.residual_group.blocks) for layer in self.layers)

    def constants(self, layout: WindowLayout) -> list[BlockConstants]:
        """Every block's :class:`BlockConstants` for a forward call of the branch, derived afresh on every call
        (differentiable where autograd is on).

        They are not cached between calls: a cache keyed on the parameters' addresses and version counters
        went stale when weights were written through ``.data`` (``p.data.mul_()``, ``p.data.copy_()``, EMA
        updates such as BasicSR's ``model_ema``), which bumps no version counter autograd sees. Deriving them
        costs about 0.5 % of a 1x5x3x64x64 eval forward (measured: 40-75 ms for the four branches of the REDS
        network against 11 s or more for the forward, 2 threads).
        """
        with torch.autocast(layout.device.type, enabled=False):  # folded weights keep the parameters' dtype
            return [block.constants(layout) for layer in self.layers for block in layer.residual_group.blocks]

    def forward(self, frames: torch.Tensor, states: list[BlockState] | None, control: MaskControl,
                layout: WindowLayout, constants: list[BlockConstants], use_checkpoint: bool
                ) -> tuple[torch.Tensor, list[BlockState], list[torch.Tensor | None]]:
        if constants[0].attn_masks.shape[-1] != frames.shape[1] * layout.tokens:
            raise ValueError(f'constants for {constants[0].attn_masks.shape[-1] // layout.tokens} frames, '
                             f'got {frames.shape[1]} frames')
        center = frames[:, -1]
        tokens = self.patch_embed.norm(frames.permute(0, 1, 3, 4, 2))
        # every block attends to the same aligned frames: normalised and partitioned once per step
        aligned = normalise(tokens[:, :-1])
        inference = not torch.is_grad_enabled()
        device = layout.device.type
        if torch.is_autocast_enabled(device) and inference:
            # inference: every block's k/v projection reads them in the autocast dtype; cast once, not per block,
            # and before the two window gathers (half the bytes they write; 1x3x3x180x320 bf16: 25.8 against 26.1 s)
            aligned = aligned.to(torch.get_autocast_dtype(device))
        aligned = [layout.aligned_windows(aligned, shifted, spare_rows=inference) for shifted in (False, True)]
        x = tokens[:, -1]
        carried = residual_dtype(layout.device)
        if carried is not None:
            x = x.to(carried)
        new_states, ratios = [], []
        block_index = 0
        for layer in self.layers:
            shortcut = x
            blocks = layer.residual_group.blocks
            shifted = blocks[0].shifted
            x_rows = layout.windows(x, shifted)
            for block in blocks:
                if block.shifted != shifted:
                    shifted = block.shifted
                    x_rows = layout.switch(x_rows, shifted)
                state = None
                if states is not None:  # released from the list as it is replaced: one set of states alive, not two
                    state, states[block_index] = states[block_index], None
                args = (x_rows, aligned[shifted], constants[block_index], layout, state, control)
                if use_checkpoint and self.training and torch.is_grad_enabled():
                    x_rows, state, ratio = checkpoint(block, *args, use_reentrant=False)
                else:
                    x_rows, state, ratio = block(*args)
                new_states.append(state)
                ratios.append(ratio)
                block_index += 1
            x = layer.conv(layout.image(x_rows, shifted).permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + shortcut
        features = self.norm(x).permute(0, 3, 1, 2)
        return self.conv_after_body(features) + center, new_states, ratios


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


BRANCHES = ('backward_1', 'forward_1', 'backward_2', 'forward_2')
MIN_FLOW_SIZE = 64  # the original asserts LR frames of at least 64 px (SpyNet); smaller frames are padded


class RecurrentInterIntraVSR(nn.Module):
    """The network shared by MIA-VSR and IIA-VSR; ``MIAVSR`` and ``IIAVSR`` document the arguments.

    Second-order propagation over four branches (backward_1 <- spatial features, forward_1 <- backward_1,
    backward_2 <- forward_1, forward_2 <- backward_2); each step conditions the branch's transformer on the
    current frame and its own outputs of the two previous steps, patch-warped with SpyNet flows (the
    second-order flow composed as in BasicVSR++). Reconstruction reads forward_2 only.
    """

    def __init__(self, in_channels: int, mid_channels: int, embed_dim: int, depths: Sequence[int],
                 num_heads: Sequence[int], window_size: Sequence[int], num_frames: int, patch_size: int,
                 mlp_ratio: float, drop_path_rate: float, is_low_res_input: bool, with_mask_predictor: bool,
                 use_mask: bool, gumbel_noise: bool, mask_temperature: float, spynet_path: str | None,
                 use_checkpoint: bool, skip: str = 'bilinear') -> None:
        super().__init__()
        name = type(self).__name__
        if skip not in ('bilinear', 'bicubic'):
            raise ValueError(f"{name}: skip must be 'bilinear' (the original) or 'bicubic', got {skip!r}")
        if not is_low_res_input:
            raise ValueError(f'{name}: is_low_res_input=False is not supported (the original never builds its '
                             'feature extractor for HR input); pass LR frames and is_low_res_input=True')
        if patch_size != 1:
            raise ValueError(f'{name}: patch_size must be 1 (every LR pixel is a token), got {patch_size}')
        if len(window_size) != 3 or num_frames != 3 or window_size[0] != num_frames:
            raise ValueError(f'{name}: num_frames must be 3 (current + two aligned frames) and window_size '
                             f'(3, h, w); got num_frames={num_frames}, window_size={list(window_size)}')
        if spynet_path is not None and not Path(spynet_path).is_file():
            raise FileNotFoundError(f'{name}: spynet_path {spynet_path!r} does not exist')
        self.mid_channels = mid_channels
        self.embed_dim = embed_dim
        self.window_size = tuple(window_size)
        self.use_checkpoint = use_checkpoint
        self.use_mask = use_mask
        self.gumbel_noise = gumbel_noise
        self.mask_temperature = mask_temperature
        self.sparse_inference: bool | None = None  # None: where it pays (sparse_pays)
        self.forced_keep_ratio: float | None = None

        self.conv_before_upsample = nn.Conv2d(embed_dim, mid_channels, 3, 1, 1)
        self.spynet = SpyNet(load_path=spynet_path)
        self.conv_first = nn.Conv2d(in_channels, embed_dim, 3, 1, 1)
        self.patch_align = nn.ModuleDict({
            branch: PatchAlignTransformer(in_channels, mid_channels, embed_dim, depths, num_heads, window_size,
                                          mlp_ratio, drop_path_rate, with_mask_predictor)
            for branch in BRANCHES})
        self.upconv1 = nn.Conv2d(mid_channels, mid_channels * 4, 3, 1, 1)
        self.upconv2 = nn.Conv2d(mid_channels, mid_channels * 4, 3, 1, 1)
        self.conv_hr = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.conv_last = nn.Conv2d(mid_channels, in_channels, 3, 1, 1)
        self.skip = skip
        if skip == 'bicubic':  # start exactly at bicubic upscaling: the head learns a residual over it
            nn.init.zeros_(self.conv_last.weight)
            nn.init.zeros_(self.conv_last.bias)
        self.in_channels = in_channels
        self.has_mask_predictor = with_mask_predictor
        self._layout: WindowLayout | None = None  # the last forward call's, reused for the same shape

    def window_layout(self, batch: int, height: int, width: int, device: torch.device) -> WindowLayout:
        """The :class:`WindowLayout` of (batch, height, width) frames, kept from the previous call if equal."""
        layout = self._layout
        if layout is None or (layout.batch, layout.height, layout.width, layout.device) != (batch, height, width,
                                                                                            device):
            self._layout = layout = WindowLayout(batch, height, width, self.window_size, device)
        return layout

    def mask_control(self, device: torch.device) -> MaskControl:
        """This call's mask settings, for frames on ``device`` (``sparse_inference`` None: :func:`sparse_pays`)."""
        if self.forced_keep_ratio is not None and not 0.0 <= self.forced_keep_ratio <= 1.0:
            raise ValueError(f'forced_keep_ratio must be in [0, 1] or None, got {self.forced_keep_ratio}')
        sparse = sparse_pays(device) if self.sparse_inference is None else self.sparse_inference
        return MaskControl(self.use_mask, self.gumbel_noise, self.mask_temperature, sparse, self.forced_keep_ratio)

    def compute_flows(self, lqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flows_backward, flows_forward), each (n, t-1, 2, h, w): backward[:, i] warps frame i+1 onto frame
        i, forward[:, i] warps frame i onto frame i+1. A mirror-extended clip (second half = first half
        reversed) reuses the backward flows; that is decided per call, never remembered."""
        n, t, c, h, w = lqs.shape
        first, second = lqs[:, :-1].reshape(-1, c, h, w), lqs[:, 1:].reshape(-1, c, h, w)
        backward = self.spynet(first, second).view(n, t - 1, 2, h, w)
        mirrored = t % 2 == 0 and torch.equal(lqs[:, :t // 2], lqs[:, t // 2:].flip(1))
        forward = backward.flip(1) if mirrored else self.spynet(second, first).view(n, t - 1, 2, h, w)
        return backward, forward

    def propagate(self, branch: str, inputs: list[torch.Tensor], flows: torch.Tensor, control: MaskControl,
                  layout: WindowLayout) -> tuple[list[torch.Tensor], list[list[torch.Tensor | None]]]:
        """Run one branch over the clip; returns its per-frame features (in time order) and keep ratios per
        step (in processing order)."""
        t = len(inputs)
        backward = branch.startswith('backward')
        order = range(t - 1, -1, -1) if backward else range(t)
        # flows[:, flow_of[i]] aligns the previously processed frame to frame i
        flow_of = (lambda i: i) if backward else (lambda i: i - 1)
        module = self.patch_align[branch]
        constants = module.constants(layout)
        one_frame_constants = [consts.with_one_aligned_frame() for consts in constants]
        device = layout.device.type
        if torch.is_autocast_enabled(device):  # after the merge above, which is in the parameters' dtype
            dtype = torch.get_autocast_dtype(device)
            constants = [consts.in_dtype(dtype) for consts in constants]
            one_frame_constants = [consts.in_dtype(dtype) for consts in one_frame_constants]
        patch = self.window_size[1:]
        outputs, states, ratios = [], None, []
        for step, idx in enumerate(order):
            current = inputs[idx]
            # the aligned frames: the current one at the first step, the previous output warped at the second (both
            # twice in the original: passed once, see PatchAlignTransformer)
            if step == 0:
                frames = _stacked([current, current])
            else:
                flow_n1 = flows[:, flow_of(idx)]
                cond_n1 = patch_flow_warp(outputs[-1], flow_n1, patch)
                if step == 1:
                    frames = _stacked([cond_n1, current])
                else:
                    prev_idx = order[step - 1]
                    flow_n2 = flow_n1 + flow_warp(flows[:, flow_of(prev_idx)], flow_n1.permute(0, 2, 3, 1))
                    cond_n2 = patch_flow_warp(outputs[-2], flow_n2, patch)
                    frames = _stacked([cond_n2, cond_n1, current])
            step_constants = one_frame_constants if frames.shape[1] == 2 else constants
            feature, states, step_ratios = module(frames, states, control, layout, step_constants, self.use_checkpoint)
            outputs.append(feature)
            ratios.append(step_ratios)
        return (outputs[::-1] if backward else outputs), ratios

    def reconstruct(self, lq: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        hr = self.conv_before_upsample(feature)
        hr = F.leaky_relu(F.pixel_shuffle(self.upconv1(hr), 2), 0.1)
        hr = F.leaky_relu(F.pixel_shuffle(self.upconv2(hr), 2), 0.1)
        hr = F.leaky_relu(self.conv_hr(hr), 0.1)
        return self.conv_last(hr) + F.interpolate(lq, scale_factor=4, mode=self.skip, align_corners=False)

    def forward(self, lqs: torch.Tensor, return_keep_ratios: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """lqs: (n, t, C, h, w) LR clip in [0, 1]. Returns the (n, t, C, 4h, 4w) output and, when asked, the
        keep ratios: a (4 branches, t-1 frames, blocks) tensor (training: differentiable through the
        straight-through estimator), or None when no mask acts (IIA-VSR, ``use_mask=False``, t == 1)."""
        if lqs.dim() != 5 or lqs.shape[2] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects (n, t, {self.in_channels}, h, w) input, '
                             f'got {tuple(lqs.shape)}')
        n, t, c, h, w = lqs.shape
        padded = _pad_to_min_size(lqs, MIN_FLOW_SIZE)
        hp, wp = padded.shape[-2:]
        layout = self.window_layout(n, hp, wp, padded.device)
        load = _load_reader(layout)
        control = self.mask_control(padded.device)
        spatial = self.conv_first(padded.flatten(0, 1)).view(n, t, -1, hp, wp).unbind(1)
        if t > 1:
            flows_backward, flows_forward = self.compute_flows(padded)
        else:
            flows_backward = flows_forward = padded.new_zeros(n, 0, 2, hp, wp)
        features, all_ratios = list(spatial), []
        for branch in BRANCHES:
            flows = flows_backward if branch.startswith('backward') else flows_forward
            with threads_beside_load(load):
                features, ratios = self.propagate(branch, features, flows, control, layout)
            all_ratios.append(ratios[1:])  # the first processed frame has no previous state: no mask
        out = torch.stack([self.reconstruct(padded[:, i], features[i]) for i in range(t)], dim=1)
        out = out[..., :4 * h, :4 * w]
        if not return_keep_ratios:
            return out
        if t == 1 or not (control.use_mask and self.has_mask_predictor):
            return out, None
        return out, torch.stack([torch.stack([torch.stack(step) for step in ratios]) for ratios in all_ratios])


def _stacked(frames: list[torch.Tensor]) -> torch.Tensor:
    """(n, C, h, w) frames -> (n, t, C, h, w) with the channels innermost in memory, as the branch's token norm reads
    them (``frames.permute(0, 1, 3, 4, 2)``): the stack's one copy transposes, instead of a second, transposing copy
    before the norm (55 ms per step at 180x320 LR)."""
    return torch.stack([frame.permute(0, 2, 3, 1) for frame in frames], 1).permute(0, 1, 4, 2, 3)


def sparse_pays(device: torch.device) -> bool:
    """Whether computing only the kept tokens (gather/scatter, ``MaskControl.sparse``) beats computing every token
    and selecting, as measured with benchmarks/miavsr_speed.py --compare-paths (same weights and clip, alternating
    calls, 1x5x3x64x64 unless said, 2 threads of an AMX Xeon): on the CPU it does, in fp32 (6.37 against 7.50 s,
    best of three pairs) and under bf16 autocast (4.46 against 5.18 s), there in the shapes of
    ``mia_block.gather_shapes`` (before them it took 8.20 against 5.12 s). On CUDA it never does (H200: fp32 1.51
    against 0.80 s, and 3.52 against 2.39 s at 180x320; bf16 autocast 1.98 against 1.20 s), as each gather there is
    several kernel launches and a host sync."""
    return device.type == 'cpu'


def _load_reader(layout: WindowLayout) -> OtherLoad | None:
    """For CPU inference whose blocks run their windows on one thread team (too few windows for chunk workers),
    an :class:`OtherLoad`: each branch then runs with one thread fewer per CPU other processes took during the
    previous part of the call (``vsrkit.utils.cpu_load``), as a team's barriers stall whenever one of its threads
    loses its core. Chunk workers meet once per block and make use of every thread they get: beside one busy
    process on 2 cores, a 2-frame 180x320 LR clip took 120 s with 2 workers against 138 s on 1 thread. None also
    where load-aware threads are off (no /proc/stat reading then)."""
    if layout.device.type != 'cpu' or torch.is_grad_enabled() or not load_aware():
        return None
    workers, _ = chunk_plan(layout.batch * layout.windows_per_sample, WINDOW_CHUNK, MIN_WINDOWS_PER_WORKER,
                            layout.device)
    return OtherLoad() if workers == 1 else None


def _pad_to_min_size(lqs: torch.Tensor, min_size: int) -> torch.Tensor:
    """Pad frames smaller than ``min_size`` at the bottom/right (reflect where possible) for SpyNet."""
    n, t, c, h, w = lqs.shape
    pad_h, pad_w = max(0, min_size - h), max(0, min_size - w)
    if not pad_h and not pad_w:
        return lqs
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return F.pad(lqs.flatten(0, 1), (0, pad_w, 0, pad_h), mode=mode).view(n, t, c, h + pad_h, w + pad_w)
