"""Building blocks shared by MIA-VSR (``MIAVSR``) and IIA-VSR (``IIAVSR``); registers nothing.

Layout of one propagation branch (the original's ``SwinIRFM``, here :class:`PatchAlignTransformer`): the
current frame's features and the two flow-aligned previous ones are layer-normed (``patch_embed.norm``), then
residual groups of :class:`InterIntraBlock` update the *current* frame's tokens only. In a block, the queries
are the current frame's tokens of a 3x8x8 window and keys/values all 192 tokens of the window (inter- and
intra-frame attention), with a relative-position bias table indexed (64, 192).

The adaptive mask (MIA-VSR): a linear layer reads |LN(current) - the same block's LN(current) of the previous
frame| and decides per token whether to recompute. A token that is not kept reuses the previous frame's
attention-projection output and MLP output of that block. State between frames is passed explicitly as a
:class:`BlockState` and returned anew (never a mutated list), so a block is a pure function and gradient
checkpointing recomputes exactly what the forward pass computed.

In eval mode the kept tokens are gathered and only they go through the query projection, the attention, the
output projection and the MLP; results are scattered into the reused previous outputs (``sparse`` path).
Keys/values come from every token of a window that has a kept token (windows without one are skipped). When a
block keeps SPARSE_BELOW or more of its tokens, computing all of them and selecting is cheaper (measured) and
is done instead. ``MaskControl.sparse=False`` always computes every token and then selects (the dense
reference, the same function).

How the function is arranged for speed (the CPU profile of a straightforward version was dominated by
copies: per-block rolls, pads, partitions, concatenations and gathers; see benchmarks/miavsr_speed.py):
- Tokens stay in window-partitioned rows (:class:`WindowLayout`) through the blocks of a residual group;
  going between an unshifted and a shifted block is one row gather (roll and partition in one index), and
  only the group's convolution sees the image layout.
- Each block's ``norm1`` affine (g, b) is folded into its projections (W diag(g), W b + c), so the two aligned
  frames, which every block of a step attends to, are normalised and partitioned once per step.
- The folded weights, and the relative-position bias added to each shift-mask pattern, are computed once per
  forward call of a branch (:meth:`InterIntraBlock.constants`): never stale, in training as in eval.
- Within a sample, the windows of the shifted layout are sorted by mask pattern, so attention is one SDPA
  call per pattern (and chunk) with a broadcast (1, heads, L, S) float mask, which keeps CPU SDPA on its
  fused kernel.
- A block runs WINDOW_CHUNK windows at a time from its norm to its MLP, and keeps no state for the next
  frame when no mask will read it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim before the basicsr import)
from basicsr.archs.arch_util import flow_warp

SHIFT_MASK_VALUE = -100.0  # the original's additive mask value between regions of a shifted window (not -inf)
WINDOW_CHUNK = 16  # windows a block computes at a time (temporaries of a few MB at the REDS width)
# eval: gather/scatter below this share of kept tokens; above, computing all and selecting is cheaper. Measured
# (one block, 2 threads): at keep 0.6-0.9 gathering beats computing all by 5-25 % at 64x64 and 180x320 LR
SPARSE_BELOW = 0.95
WHOLE_WINDOW_SLACK = 8  # sparse path: a window missing at most this many kept tokens is computed whole


@dataclass(frozen=True)
class MaskControl:
    """How the adaptive mask behaves in one forward call (read from the network's attributes).

    use_mask: apply the mask at all (False: every token is computed, as the original's ``use_mask=False``).
    gumbel_noise: add logistic noise before thresholding in training mode.
    temperature: Gumbel-sigmoid temperature (2/3 in the original).
    sparse: in eval mode, compute only kept tokens (gather/scatter) where a block keeps less than SPARSE_BELOW
        of them; False computes all and selects.
    forced_keep_ratio: eval only: keep this fraction of each sample's tokens (highest logits) instead of
        thresholding at 0 — for benchmarks with untrained weights.
    """

    use_mask: bool = True
    gumbel_noise: bool = True
    temperature: float = 2 / 3
    sparse: bool = True
    forced_keep_ratio: float | None = None


class BlockState(NamedTuple):
    """What a block hands to the same block at the next frame (all detached, as in the original); rows in the
    block's window layout (see :class:`WindowLayout`)."""

    tokens: torch.Tensor  # current-frame tokens normalised before norm1's affine, zero at padding (R, C)
    attn_out: torch.Tensor  # attention-projection output (R, C)
    mlp_out: torch.Tensor  # MLP output, after drop path (R, C)


class BlockConstants(NamedTuple):
    """Tensors a block derives from its parameters for one forward call (:meth:`InterIntraBlock.constants`)."""

    q_weight: torch.Tensor  # query projection with norm1's affine folded in
    q_bias: torch.Tensor
    kv_weight: torch.Tensor  # key/value projection with norm1's affine folded in, without bias (see constants)
    pad_kv: torch.Tensor  # key/value of a padding token relative to the dropped bias
    proj_bias: torch.Tensor  # output projection bias with the value bias folded in
    attn_masks: torch.Tensor  # (patterns, L, heads, S): relative-position bias + each shift-mask pattern
    mask_weight: torch.Tensor | None  # mask predictor weight times |norm1 weight| (None: no predictor)
    mask_bias: torch.Tensor | None


def relative_position_index(window_size: Sequence[int]) -> torch.Tensor:
    """(Wh*Ww, Wt*Wh*Ww) indices into the (Wt*(2Wh-1)*(2Ww-1)) bias table, exactly as the original builds them.

    The original places the queries at temporal coordinate 0 (although they are the window's last frame), so
    the temporal term is ``(Wt - 1 - t_key)``; the index (a checkpoint buffer) is reproduced as is.
    """
    wt, wh, ww = window_size
    key = torch.stack(torch.meshgrid(torch.arange(wt), torch.arange(wh), torch.arange(ww), indexing='ij')).flatten(1)
    query = torch.stack(torch.meshgrid(torch.arange(1), torch.arange(wh), torch.arange(ww), indexing='ij')).flatten(1)
    rel = (query[:, :, None] - key[:, None, :]).permute(1, 2, 0)
    rel = rel + torch.tensor([wt - 1, wh - 1, ww - 1])
    return rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]


class WindowLayout:
    """Where each token of a (batch, height, width) frame sits in the window rows of an unshifted (index 0)
    and a shifted (index 1) block; built once per forward call.

    The frame is zero-padded at the bottom/right to the window multiple and, for shifted blocks, rolled by
    half a window (the original also rolls time by Wt, a no-op on a Wt-frame window). Rows are batch-major,
    ``tokens`` (Wh*Ww) consecutive rows form a window. Within a sample the shifted layout's windows are sorted
    by their shift-mask pattern (Swin's 9 regions, value -100); ``groups[s]`` lists ``(start, stop, pattern)``
    window ranges (never across samples), ``shift_masks[s]`` the (patterns, L, S) additive masks,
    ``window_pattern[s]`` each window's pattern. ``pad[s]`` marks padding rows (b*nW, L), ``key_pad[s]``
    padding keys (b*nW, S) or None.
    """

    def __init__(self, batch: int, height: int, width: int, window_size: Sequence[int],
                 device: torch.device) -> None:
        frames, wh, ww = window_size
        hp, wp = height + (-height) % wh, width + (-width) % ww
        self.batch, self.height, self.width, self.device = batch, height, width, torch.device(device)
        self.tokens = wh * ww
        self.windows_per_sample = (hp // wh) * (wp // ww)
        self.has_padding = (hp, wp) != (height, width)
        padded = torch.arange(batch * hp * wp, device=device).view(batch, hp, wp)
        inside = torch.zeros(batch, hp, wp, dtype=torch.bool, device=device)
        inside[:, :height, :width] = True
        image_index = torch.zeros(batch, hp, wp, dtype=torch.long, device=device)
        image_index[:, :height, :width] = torch.arange(batch * height * width, device=device).view(
            batch, height, width)
        region = torch.zeros(hp, wp, dtype=torch.long, device=device)
        label = 0
        for rows in (slice(0, -wh), slice(-wh, -(wh // 2)), slice(-(wh // 2), None)):
            for cols in (slice(0, -ww), slice(-ww, -(ww // 2)), slice(-(ww // 2), None)):
                region[rows, cols] = label
                label += 1
        labels = rearrange(region, '(nh wh) (nw ww) -> (nh nw) (wh ww)', wh=wh, ww=ww)
        shift_patterns = (labels[:, :, None] != labels.repeat(1, frames)[:, None, :]).flatten(1)

        self.gather, self.scatter, self.pad, self.pad_rows, self.key_pad = [], [], [], [], []
        self.groups, self.window_pattern, self.shift_masks = [], [], []
        positions, row_of = [], []
        for shifted in (False, True):
            if shifted:
                grid = torch.roll(padded, (-(wh // 2), -(ww // 2)), dims=(1, 2))
                patterns, pattern = torch.unique(shift_patterns, dim=0, return_inverse=True)
            else:
                grid = padded
                patterns = torch.zeros_like(shift_patterns[:1])
                pattern = torch.zeros(labels.shape[0], dtype=torch.long, device=device)
            order = torch.argsort(pattern, stable=True)
            where = rearrange(grid, 'b (nh wh) (nw ww) -> b (nh nw) (wh ww)', wh=wh, ww=ww)[:, order].flatten()
            rows = torch.empty_like(where)
            rows[where] = torch.arange(where.numel(), device=device)
            positions.append(where)
            row_of.append(rows)
            pad = ~inside.flatten()[where]
            self.gather.append(image_index.flatten()[where])
            self.scatter.append(rows[padded[:, :height, :width].flatten()])
            self.pad.append(pad.view(-1, self.tokens))
            self.pad_rows.append(torch.nonzero(pad).squeeze(1))
            self.key_pad.append(self.pad[-1].repeat(1, frames) if self.has_padding else None)
            pattern = pattern[order]
            self.window_pattern.append(pattern.repeat(batch))
            self.shift_masks.append(patterns.view(-1, self.tokens, self.tokens * frames).float() * SHIFT_MASK_VALUE)
            values, counts = torch.unique_consecutive(pattern, return_counts=True)
            stops = counts.cumsum(0).tolist()
            self.groups.append([(n * len(pattern) + stop - count, n * len(pattern) + stop, value)
                                for n in range(batch) for stop, count, value in zip(stops, counts.tolist(),
                                                                                    values.tolist())])
        # rows of layout s read from layout 1 - s: one gather undoes one shift and applies the other
        self.switch_index = [row_of[1 - s][positions[s]] for s in (0, 1)]

    def windows(self, image: torch.Tensor, shifted: bool) -> torch.Tensor:
        """(b, h, w, C) -> (rows, C) in the layout of a (shifted) block; padding rows are zero."""
        rows = image.reshape(-1, image.shape[-1]).index_select(0, self.gather[shifted])
        if self.has_padding:
            rows.index_fill_(0, self.pad_rows[shifted], 0.0)
        return rows

    def aligned_windows(self, frames: torch.Tensor, shifted: bool) -> torch.Tensor:
        """(b, t, h, w, C) -> (b*nW, t*L, C): each window's tokens of the t frames, frame after frame."""
        return torch.cat([self.windows(f, shifted).view(-1, self.tokens, f.shape[-1]) for f in frames.unbind(1)], 1)

    def image(self, rows: torch.Tensor, shifted: bool) -> torch.Tensor:
        """(rows, C) of a (shifted) layout -> (b, h, w, C) without the padding."""
        return rows.index_select(0, self.scatter[shifted]).view(self.batch, self.height, self.width, -1)

    def switch(self, rows: torch.Tensor, shifted: bool) -> torch.Tensor:
        """Rows of the other layout -> rows of the layout of a (shifted) block."""
        return rows.index_select(0, self.switch_index[shifted])


def patch_flow_warp(x: torch.Tensor, flow: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Patch alignment: average the flow over each patch (reflect-padded to the patch multiple) and warp
    ``x`` (n, c, h, w) with nearest-neighbour sampling, so every patch moves as one piece."""
    h, w = flow.shape[-2:]
    padded = F.pad(flow, (0, (-w) % patch[1], 0, (-h) % patch[0]), mode='reflect')
    pooled = F.avg_pool2d(padded, patch)
    flow = pooled.repeat_interleave(patch[0], dim=2).repeat_interleave(patch[1], dim=3)[..., :h, :w]
    return flow_warp(x, flow.permute(0, 2, 3, 1), interp_mode='nearest', padding_mode='zeros', align_corners=True)


class MaskPredictor(nn.Module):
    """Per-token keep logit from the change since the previous frame (``predmask.rnn`` in the checkpoints)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.rnn = nn.Linear(dim, 1)

    def forward(self, change: torch.Tensor) -> torch.Tensor:
        return self.rnn(change).squeeze(-1)


def keep_decision(logits: torch.Tensor, batch: int, training: bool, control: MaskControl) -> torch.Tensor:
    """0/1 keep mask (b*nW, L) from logits; in training a Gumbel-sigmoid with straight-through gradient."""
    if training:
        if control.gumbel_noise:
            # The difference of two Gumbel samples is logistic: one draw of logit(U) is the same distribution.
            logits = logits + torch.logit(torch.rand_like(logits), eps=1e-6)
        soft = torch.sigmoid(logits / control.temperature)
        return ((soft >= 0.5).to(soft.dtype) - soft).detach() + soft
    if control.forced_keep_ratio is not None:
        per_sample = logits.reshape(batch, -1)
        k = round(control.forced_keep_ratio * per_sample.shape[1])
        keep = torch.zeros_like(per_sample)
        keep.scatter_(1, per_sample.topk(k, dim=1).indices, 1.0)
        return keep.view_as(logits)
    # Same comparison as the original (not logits >= 0): identical decisions for logits within rounding of 0.
    return (torch.sigmoid(logits / control.temperature) >= 0.5).to(logits.dtype)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine (nn.LayerNorm's eps); the blocks' norm1 affine is folded into their weights."""
    return F.layer_norm(x, x.shape[-1:])


class InterIntraWindowAttention(nn.Module):
    """Queries: the current frame's Wh*Ww tokens of a window; keys/values: all Wt*Wh*Ww tokens of the window.

    Parameter names follow the original (``qkv`` packs q, k, v; ``predmask`` only with a mask predictor). The
    projections take normalised tokens and the folded weights of :class:`BlockConstants`.
    """

    def __init__(self, dim: int, window_size: Sequence[int], num_heads: int, with_mask_predictor: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dim {dim} is not divisible by num_heads {num_heads}')
        wt, wh, ww = window_size
        self.dim = dim
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros(wt * (2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer('relative_position_index', relative_position_index(window_size))
        self.predmask = MaskPredictor(dim) if with_mask_predictor else None
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=.02)

    def position_bias(self) -> torch.Tensor:
        """(heads, L, S) additive bias."""
        return self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)

    def keys_values(self, windows: torch.Tensor, aligned: torch.Tensor, key_pad: torch.Tensor | None,
                    consts: BlockConstants) -> torch.Tensor:
        """(n, S, 2C) keys and values of n windows: windows (n, L, C) and aligned (n, S-L, C) normalised
        current-frame and aligned-frame tokens; key_pad: (n, S) padding keys or None."""
        kv = F.linear(torch.cat([aligned, windows], 1), consts.kv_weight)
        if key_pad is not None:
            kv[key_pad] = consts.pad_kv.to(kv.dtype)
        return kv

    def attend(self, queries: torch.Tensor, kv: torch.Tensor, consts: BlockConstants,
               mask: torch.Tensor) -> torch.Tensor:
        """Projected attention output (n, l, C) of normalised ``queries`` (n, l, C) on the keys/values of their
        windows; mask: (1 or n, heads, l, S) additive bias and shift mask."""
        heads = (self.num_heads, self.dim // self.num_heads)
        q = F.linear(queries, consts.q_weight, consts.q_bias).unflatten(-1, heads).transpose(1, 2)
        k = kv[..., :self.dim].unflatten(-1, heads).transpose(1, 2)
        v = kv[..., self.dim:].unflatten(-1, heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return F.linear(out.transpose(1, 2).flatten(2), self.proj.weight, consts.proj_bias)

    def forward(self, windows: torch.Tensor, aligned: torch.Tensor, key_pad: torch.Tensor | None,
                consts: BlockConstants, mask: torch.Tensor) -> torch.Tensor:
        """Projected attention output (n, L, C) of every current-frame token of n windows."""
        return self.attend(windows, self.keys_values(windows, aligned, key_pad, consts), consts, mask)

    def forward_kept(self, current: torch.Tensor, aligned: torch.Tensor, consts: BlockConstants,
                     layout: WindowLayout, shifted: bool, keep: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Projected attention output (rows, C) for the kept tokens; the others take ``previous``.

        current: (rows, C) normalised current-frame tokens of the layout of a (shifted) block; aligned:
        (b*nW, S-L, C); keep: bool (b*nW, L). Windows without a kept token are skipped (not even k/v). A window
        with at most WHOLE_WINDOW_SLACK tokens not kept is computed whole, with the broadcast mask of its shift
        pattern. The other windows are sorted by their number of kept tokens and taken WINDOW_CHUNK at a
        time; a chunk's queries are each window's kept tokens, padded to the chunk's largest count, with their
        mask rows gathered per query.
        """
        out = previous.clone()
        tokens = layout.tokens
        windows = current.view(-1, tokens, self.dim)
        key_pad = layout.key_pad[shifted]
        counts = keep.sum(1)
        whole = counts >= tokens - WHOLE_WINDOW_SLACK
        pattern = layout.window_pattern[shifted]
        whole_windows = torch.nonzero(whole).squeeze(1)
        whole_windows = whole_windows[torch.argsort(pattern[whole_windows], stable=True)]
        partial = torch.nonzero((counts > 0) & ~whole).squeeze(1)
        partial = partial[torch.argsort(counts[partial], descending=True, stable=True)]
        every = torch.arange(tokens, device=keep.device)
        masks = consts.attn_masks.flatten(0, 1)  # (patterns * L, heads, S): a query's mask row to gather
        rows, values = [], []

        def attend(which: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                   mask: torch.Tensor | None) -> None:
            """Queries at ``positions`` (n, l) of windows ``which``; mask: broadcast, or None to gather."""
            kv = self.keys_values(windows.index_select(0, which), aligned.index_select(0, which),
                                  None if key_pad is None else key_pad.index_select(0, which), consts)
            token_rows = which[:, None] * tokens + positions
            queries = current.index_select(0, token_rows.flatten()).view(*positions.shape, self.dim)
            if mask is None:  # gathered after k/v: the k/v GEMM measured slower right after this gather
                mask = masks.index_select(0, (pattern[which, None] * tokens + positions).flatten())
                mask = mask.view(*positions.shape, *mask.shape[1:]).transpose(1, 2)
            att = self.attend(queries, kv, consts, mask)
            rows.append(token_rows[valid])
            values.append(att[valid])

        runs, sizes = torch.unique_consecutive(pattern[whole_windows], return_counts=True)
        start = 0
        for run, size in zip(runs.tolist(), sizes.tolist()):
            mask = consts.attn_masks[run].transpose(0, 1)[None]
            for first in range(start, start + size, WINDOW_CHUNK):
                which = whole_windows[first:min(first + WINDOW_CHUNK, start + size)]
                attend(which, every.expand(which.numel(), -1), keep.index_select(0, which), mask)
            start += size
        if partial.numel():
            kept_first = torch.argsort((~keep.index_select(0, partial)).to(torch.int8), dim=1, stable=True)
            for first, cap in zip(range(0, partial.numel(), WINDOW_CHUNK), counts[partial[::WINDOW_CHUNK]].tolist()):
                which = partial[first:first + WINDOW_CHUNK]
                attend(which, kept_first[first:first + WINDOW_CHUNK, :cap], every[:cap] < counts[which, None], None)
        if rows:
            out.index_copy_(0, torch.cat(rows), torch.cat(values).to(out.dtype))
        return out


def _select(new: torch.Tensor, old: torch.Tensor, keep: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``new`` where kept, of ``old`` elsewhere: a straight-through blend with the 0/1 ``keep`` (n, L)
    in training; in eval, ``old``'s rows copied over the rows of ``new`` not ``kept`` (``new``, a fresh output
    that nothing saves for backward, is overwritten: a third of the time of torch.where, measured)."""
    if kept is None:
        keep = keep.reshape(-1, 1)
        return new * keep + old * (1 - keep)
    others = torch.nonzero(~kept.reshape(-1)).squeeze(1)
    return new.index_copy_(0, others, old.index_select(0, others))


class InterIntraBlock(nn.Module):
    """One (masked) inter&intra-frame attention block; odd blocks shift the windows by half a window.

    forward(x, aligned, consts, layout, state, control) -> (x, new_state or None, keep_ratio or None)
      x: (rows, C) current-frame tokens in this block's window layout (``layout.windows(image, shifted)``);
      aligned: (b*nW, 2L, C) the two aligned frames in the same layout, normalised without affine
      (``layout.aligned_windows(normalise(tokens), shifted)``); consts: ``self.constants(layout)``. The new
      state is None when no mask will read it (no predictor, or ``use_mask`` off).

    The block runs WINDOW_CHUNK windows at a time from the norm to the MLP, so its temporaries are a few MB
    whatever the frame size, and a chunk's keys/values stay in a core's L2 cache (measured: 16 windows per
    chunk made the masked block ~20% faster than 32; the unmasked one is the same).
    """

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], shifted: bool, mlp_ratio: float,
                 drop_path: float, with_mask_predictor: bool) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = InterIntraWindowAttention(dim, window_size, num_heads, with_mask_predictor)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def constants(self, layout: WindowLayout) -> BlockConstants:
        """The folded projections and the attention masks for one forward call (differentiable).

        W (g x + b) + c = (W diag g) x + (W b + c) for a normalised token x. The key/value projection has no
        bias, which spares a pass over the largest tensor of a block: adding the same vector to every key
        shifts each query's scores by a constant (softmax is unchanged), and to every value shifts the output
        by it (folded into the output projection's bias). Padding tokens, zero after the original's norm, have
        k/v = c, i.e. ``pad_kv = -(W b)`` relative to the dropped (W b + c).
        """
        dim = self.attn.dim
        qkv, proj, scale = self.attn.qkv, self.attn.proj, self.norm1.weight
        weight = qkv.weight * scale
        bias = F.linear(self.norm1.bias, qkv.weight, qkv.bias)
        bias_rows = self.attn.position_bias().transpose(0, 1)  # (L, heads, S)
        masks = (bias_rows + layout.shift_masks[self.shifted][:, :, None]).contiguous()
        mask_weight = mask_bias = None
        if self.attn.predmask is not None:
            # |(g a + b) - (g a' + b)| = |g| |a - a'|; the original detaches the predictor's input
            mask_weight = self.attn.predmask.rnn.weight * scale.detach().abs()
            mask_bias = self.attn.predmask.rnn.bias
        return BlockConstants(weight[:dim], bias[:dim], weight[dim:], qkv.bias[dim:] - bias[dim:],
                              F.linear(bias[2 * dim:], proj.weight, proj.bias), masks, mask_weight, mask_bias)

    def forward(self, x: torch.Tensor, aligned: torch.Tensor, consts: BlockConstants, layout: WindowLayout,
                state: BlockState | None, control: MaskControl
                ) -> tuple[torch.Tensor, BlockState | None, torch.Tensor | None]:
        shifted = self.shifted
        current = normalise(x)
        if layout.has_padding:  # the original zero-pads after the norm
            current.index_fill_(0, layout.pad_rows[shifted], 0.0)

        keep = kept = None
        if control.use_mask and consts.mask_weight is not None and state is not None:
            change = torch.sub(current.detach(), state.tokens).abs_()
            logits = F.linear(change, consts.mask_weight, consts.mask_bias)
            keep = keep_decision(logits.view(-1, layout.tokens), layout.batch, self.training, control)
            if not self.training:
                kept = keep.bool()
                if layout.has_padding:  # padding tokens are cropped from the output: never worth computing
                    kept &= ~layout.pad[shifted]

        with_state = control.use_mask and consts.mask_weight is not None
        if kept is not None and control.sparse and int(kept.sum()) < SPARSE_BELOW * kept.numel():
            x, attn_out, hidden = self._forward_kept(x, current, aligned, consts, layout, state, kept)
        else:
            x, attn_out, hidden = self._forward_all(x, current, aligned, consts, layout, state, keep, kept,
                                                    with_state)
        ratio = None if keep is None else keep.mean()
        new_state = BlockState(current.detach(), attn_out.detach(), hidden.detach()) if with_state else None
        return x, new_state, ratio

    def _forward_all(self, x: torch.Tensor, current: torch.Tensor, aligned: torch.Tensor, consts: BlockConstants,
                     layout: WindowLayout, state: BlockState | None, keep: torch.Tensor | None,
                     kept: torch.Tensor | None, with_state: bool
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Every token computed, chunk by chunk; with a mask, tokens not kept take the previous outputs."""
        tokens, dim = layout.tokens, x.shape[-1]
        windows = current.view(-1, tokens, dim)
        key_pad = layout.key_pad[self.shifted]
        # per-sample stochastic depth factors, drawn once for the frame as DropPath on the whole frame would
        drop = [self.drop_path(x.new_ones(layout.batch, 1)) for _ in range(2)] if self.training else None
        outs, attn_outs, hiddens = [], [], []
        for start, stop, pattern in layout.groups[self.shifted]:
            mask = consts.attn_masks[pattern].transpose(0, 1)[None]  # (1, heads, L, S): broadcast
            sample = start // layout.windows_per_sample
            for first in range(start, stop, WINDOW_CHUNK):
                win = slice(first, min(first + WINDOW_CHUNK, stop))
                row = slice(win.start * tokens, win.stop * tokens)
                attn_out = self.attn(windows[win], aligned[win], None if key_pad is None else key_pad[win], consts,
                                     mask).view(-1, dim)
                if keep is not None:
                    attn_out = _select(attn_out, state.attn_out[row], keep[win], None if kept is None else kept[win])
                y = x[row] + (attn_out if drop is None else attn_out * drop[0][sample])
                hidden = self.mlp(self.norm2(y))
                if drop is not None:
                    hidden = hidden * drop[1][sample]
                if keep is not None:
                    hidden = _select(hidden, state.mlp_out[row], keep[win], None if kept is None else kept[win])
                outs.append(y + hidden)
                attn_outs.append(attn_out)
                hiddens.append(hidden)
        if not with_state:
            return torch.cat(outs), None, None
        return torch.cat(outs), torch.cat(attn_outs), torch.cat(hiddens)

    def _forward_kept(self, x: torch.Tensor, current: torch.Tensor, aligned: torch.Tensor, consts: BlockConstants,
                      layout: WindowLayout, state: BlockState, kept: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eval: only kept tokens go through q, attention, projection and MLP (gather/scatter)."""
        attn_out = self.attn.forward_kept(current, aligned, consts, layout, self.shifted, kept, state.attn_out)
        x = x + attn_out
        rows = torch.nonzero(kept.flatten()).squeeze(1)
        mlp = [self.mlp(self.norm2(chunk)) for chunk in x.index_select(0, rows).split(WINDOW_CHUNK * layout.tokens)]
        hidden = state.mlp_out.index_copy(0, rows, torch.cat(mlp).to(state.mlp_out.dtype))
        return x + hidden, attn_out, hidden


class _BlockList(nn.Module):
    """Holds ``blocks`` so that parameter names read ``residual_group.blocks.N`` as in the checkpoints."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class ResidualGroup(nn.Module):
    """Blocks, a 3x3 conv, and a residual connection around them (the original's ``RSTB``)."""

    def __init__(self, blocks: list[InterIntraBlock], dim: int) -> None:
        super().__init__()
        self.residual_group = _BlockList(blocks)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)


class _Norm(nn.Module):
    """Holds ``norm`` so that the name reads ``patch_embed.norm`` as in the checkpoints."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class PatchAlignTransformer(nn.Module):
    """One propagation branch (the original's ``SwinIRFM``): refines the current frame given two aligned ones.

    forward(frames, states, control, layout, constants, use_checkpoint) -> (features, new_states, keep_ratios)
      frames: (n, 3, C, h, w) = [aligned t-2, aligned t-1, current]; states: one BlockState per block or None
      (first frame); constants: ``self.constants(layout)``; keep_ratios: one entry per block (None where no
      mask acted).

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
        self._constants: tuple[WindowLayout, list, list[BlockConstants]] | None = None  # see constants()
        for unused in (self.conv_first, self.conv_first_feat, self.conv_before_upsample):
            unused.requires_grad_(False)

    @property
    def num_blocks(self) -> int:
        return sum(len(layer.residual_group.blocks) for layer in self.layers)

    def constants(self, layout: WindowLayout) -> list[BlockConstants]:
        """Every block's :class:`BlockConstants` for a forward call of the branch.

        In training or with autograd on they are derived afresh (differentiable). In eval without autograd
        they are kept for the next call with the same layout while no parameter or buffer changes: a tensor
        replaced (``to``, ``load_state_dict(assign=True)``) has another address, one updated in place
        (``load_state_dict``, an optimiser step) another version.
        """
        def derive() -> list[BlockConstants]:
            with torch.autocast(layout.device.type, enabled=False):  # folded weights keep the parameters' dtype
                return [block.constants(layout) for layer in self.layers for block in layer.residual_group.blocks]

        if self.training or torch.is_grad_enabled():
            return derive()
        versions = [(t.data_ptr(), t._version) for t in itertools.chain(self.parameters(), self.buffers())]
        if self._constants is None or self._constants[0] is not layout or self._constants[1] != versions:
            self._constants = (layout, versions, derive())
        return self._constants[2]

    def forward(self, frames: torch.Tensor, states: list[BlockState] | None, control: MaskControl,
                layout: WindowLayout, constants: list[BlockConstants], use_checkpoint: bool
                ) -> tuple[torch.Tensor, list[BlockState], list[torch.Tensor | None]]:
        center = frames[:, -1]
        tokens = self.patch_embed.norm(frames.permute(0, 1, 3, 4, 2))
        # every block attends to the same aligned frames: normalised and partitioned once per step
        aligned = normalise(tokens[:, :-1])
        aligned = [layout.aligned_windows(aligned, shifted) for shifted in (False, True)]
        x = tokens[:, -1]
        new_states, ratios = [], []
        block_index = 0
        for layer in self.layers:
            shortcut = x
            blocks = layer.residual_group.blocks
            shifted = blocks[0].shifted
            rows = layout.windows(x, shifted)
            for block in blocks:
                if block.shifted != shifted:
                    shifted = block.shifted
                    rows = layout.switch(rows, shifted)
                state = None if states is None else states[block_index]
                args = (rows, aligned[shifted], constants[block_index], layout, state, control)
                if use_checkpoint and self.training and torch.is_grad_enabled():
                    rows, state, ratio = checkpoint(block, *args, use_reentrant=False)
                else:
                    rows, state, ratio = block(*args)
                new_states.append(state)
                ratios.append(ratio)
                block_index += 1
            x = layer.conv(layout.image(rows, shifted).permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + shortcut
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
        from basicsr.archs.spynet_arch import SpyNet
        self.mid_channels = mid_channels
        self.embed_dim = embed_dim
        self.window_size = tuple(window_size)
        self.use_checkpoint = use_checkpoint
        self.use_mask = use_mask
        self.gumbel_noise = gumbel_noise
        self.mask_temperature = mask_temperature
        self.sparse_inference = True
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

    def mask_control(self) -> MaskControl:
        if self.forced_keep_ratio is not None and not 0.0 <= self.forced_keep_ratio <= 1.0:
            raise ValueError(f'forced_keep_ratio must be in [0, 1] or None, got {self.forced_keep_ratio}')
        return MaskControl(self.use_mask, self.gumbel_noise, self.mask_temperature, self.sparse_inference,
                           self.forced_keep_ratio)

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
        patch = self.window_size[1:]
        outputs, states, ratios = [], None, []
        for step, idx in enumerate(order):
            current = inputs[idx]
            if step == 0:
                frames = torch.stack([current, current, current], dim=1)
            else:
                flow_n1 = flows[:, flow_of(idx)]
                cond_n1 = patch_flow_warp(outputs[-1], flow_n1, patch)
                cond_n2 = cond_n1
                if step > 1:
                    prev_idx = order[step - 1]
                    flow_n2 = flow_n1 + flow_warp(flows[:, flow_of(prev_idx)], flow_n1.permute(0, 2, 3, 1))
                    cond_n2 = patch_flow_warp(outputs[-2], flow_n2, patch)
                frames = torch.stack([cond_n2, cond_n1, current], dim=1)
            feature, states, step_ratios = module(frames, states, control, layout, constants, self.use_checkpoint)
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
        control = self.mask_control()
        spatial = self.conv_first(padded.flatten(0, 1)).view(n, t, -1, hp, wp).unbind(1)
        if t > 1:
            flows_backward, flows_forward = self.compute_flows(padded)
        else:
            flows_backward = flows_forward = padded.new_zeros(n, 0, 2, hp, wp)
        layout = self.window_layout(n, hp, wp, padded.device)
        features, all_ratios = list(spatial), []
        for branch in BRANCHES:
            flows = flows_backward if branch.startswith('backward') else flows_forward
            features, ratios = self.propagate(branch, features, flows, control, layout)
            all_ratios.append(ratios[1:])  # the first processed frame has no previous state: no mask
        out = torch.stack([self.reconstruct(padded[:, i], features[i]) for i in range(t)], dim=1)
        out = out[..., :4 * h, :4 * w]
        if not return_keep_ratios:
            return out
        if t == 1 or not (control.use_mask and self.has_mask_predictor):
            return out, None
        return out, torch.stack([torch.stack([torch.stack(step) for step in ratios]) for ratios in all_ratios])


def _pad_to_min_size(lqs: torch.Tensor, min_size: int) -> torch.Tensor:
    """Pad frames smaller than ``min_size`` at the bottom/right (reflect where possible) for SpyNet."""
    n, t, c, h, w = lqs.shape
    pad_h, pad_w = max(0, min_size - h), max(0, min_size - w)
    if not pad_h and not pad_w:
        return lqs
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return F.pad(lqs.flatten(0, 1), (0, pad_w, 0, pad_h), mode=mode).view(n, t, c, h + pad_h, w + pad_w)
