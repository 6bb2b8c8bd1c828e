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
Keys/values still come from every token of the window. ``MaskControl.sparse=False`` computes every token and
then selects (the dense reference, numerically the same function).
"""
from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass
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
SPARSE_QUERY_BUCKET = 16  # kept queries of a window are padded to a multiple of this in the sparse path


@dataclass(frozen=True)
class MaskControl:
    """How the adaptive mask behaves in one forward call (read from the network's attributes).

    use_mask: apply the mask at all (False: every token is computed, as the original's ``use_mask=False``).
    gumbel_noise: add logistic noise before thresholding in training mode.
    temperature: Gumbel-sigmoid temperature (2/3 in the original).
    sparse: in eval mode, compute only kept tokens (gather/scatter); False computes all and selects.
    forced_keep_ratio: eval only: keep this fraction of each sample's tokens (highest logits) instead of
        thresholding at 0 — for benchmarks with untrained weights.
    """

    use_mask: bool = True
    gumbel_noise: bool = True
    temperature: float = 2 / 3
    sparse: bool = True
    forced_keep_ratio: float | None = None


class BlockState(NamedTuple):
    """What a block hands to the same block at the next frame (all detached, as in the original)."""

    tokens: torch.Tensor  # LN'd current-frame tokens, window layout (b*nW, L, C)
    attn_out: torch.Tensor  # attention-projection output, window layout (b*nW, L, C)
    mlp_out: torch.Tensor  # MLP output (after drop path), image layout (b, h, w, C)


class AttentionLayout(NamedTuple):
    """Padding and shifted-window mask groups for one feature size, computed once per forward call.

    groups: for shifted blocks, ``(window indices over b*nW, additive mask (L, S))`` per distinct mask pattern,
    so no (nW, heads, L, S) tensor is ever materialised (most windows share the all-zero pattern).
    """

    pad_h: int
    pad_w: int
    groups: list[tuple[torch.Tensor, torch.Tensor]]


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


def attention_layout(batch: int, height: int, width: int, window_size: Sequence[int],
                     device: torch.device) -> AttentionLayout:
    """Padding to the window multiple and the shifted-window mask patterns (Swin's 9 regions, value -100)."""
    _, wh, ww = window_size
    pad_h, pad_w = (-height) % wh, (-width) % ww
    hp, wp = height + pad_h, width + pad_w
    sh, sw = wh // 2, ww // 2
    region = torch.zeros(hp, wp, dtype=torch.long, device=device)
    label = 0
    for rows in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for cols in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            region[rows, cols] = label
            label += 1
    labels = rearrange(region, '(nh wh) (nw ww) -> (nh nw) (wh ww)', wh=wh, ww=ww)
    keys = labels.repeat(1, window_size[0])  # every frame of the window shares the spatial regions
    masks = (labels[:, :, None] != keys[:, None, :]).flatten(1)
    patterns, window_pattern = torch.unique(masks, dim=0, return_inverse=True)
    window_pattern = window_pattern.repeat(batch)
    groups = [(torch.nonzero(window_pattern == p).squeeze(1),
               patterns[p].view(labels.shape[1], keys.shape[1]).float() * SHIFT_MASK_VALUE)
              for p in range(patterns.shape[0])]
    return AttentionLayout(pad_h, pad_w, groups)


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


class InterIntraWindowAttention(nn.Module):
    """Queries: the current frame's Wh*Ww tokens of a window; keys/values: all Wt*Wh*Ww tokens of the window.

    Parameter names follow the original (``qkv`` packs q, k, v; ``predmask`` only with a mask predictor).
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

    def queries(self, tokens: torch.Tensor) -> torch.Tensor:
        q = F.linear(tokens, self.qkv.weight[:self.dim], self.qkv.bias[:self.dim])
        return rearrange(q, 'n l (h d) -> n h l d', h=self.num_heads)

    def keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kv = F.linear(tokens, self.qkv.weight[self.dim:], self.qkv.bias[self.dim:])
        k, v = rearrange(kv, 'n s (two h d) -> two n h s d', two=2, h=self.num_heads)
        return k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax(q k^T / sqrt(d) + mask) v, heads merged: (n, L, C)."""
        # A 3-D (heads, L, S) mask sends CPU SDPA to its math fallback (about 4x slower, measured); with a
        # leading batch dim of 1 it takes the fused (flash) kernel.
        mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None] if mask.dim() == 3 else mask)
        return rearrange(out, 'n h l d -> n l (h d)')

    def forward(self, current: torch.Tensor, window: torch.Tensor, groups: list | None) -> torch.Tensor:
        """Projected attention output for every current-frame token: (b*nW, L, C)."""
        bias = self.position_bias()
        q = self.queries(current)
        k, v = self.keys_values(window)
        if groups is None:
            return self.proj(self.attend(q, k, v, bias))
        out = q.new_empty(current.shape)
        for ids, shift_mask in groups:
            out[ids] = self.attend(q[ids], k[ids], v[ids], bias + shift_mask)
        return self.proj(out)

    def forward_kept(self, current: torch.Tensor, window: torch.Tensor, groups: list | None, keep: torch.Tensor,
                     previous: torch.Tensor) -> torch.Tensor:
        """Like ``forward`` but only for kept tokens; the others take ``previous``. keep: bool (b*nW, L).

        Windows are bucketed by their number of kept queries (padded to a multiple of SPARSE_QUERY_BUCKET), so
        the attention of a bucket is one fixed-shape SDPA call; windows without kept tokens are skipped.
        """
        out = previous.clone()
        if not bool(keep.any()):
            return out
        bias = self.position_bias()
        k_all, v_all = self.keys_values(window)
        counts = keep.sum(1)
        kept_first = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        caps = (counts + SPARSE_QUERY_BUCKET - 1) // SPARSE_QUERY_BUCKET * SPARSE_QUERY_BUCKET
        caps = caps.clamp(max=keep.shape[1])
        rows, values = [], []
        all_windows = [(torch.arange(keep.shape[0], device=keep.device), None)] if groups is None else groups
        for ids, shift_mask in all_windows:
            for cap in caps[ids].unique().tolist():
                if cap == 0:
                    continue
                win = ids[caps[ids] == cap]
                pos = kept_first[win, :cap]
                valid = torch.arange(cap, device=keep.device) < counts[win, None]
                q = self.queries(current[win[:, None], pos])
                mask = bias[:, pos].transpose(0, 1)  # (n, heads, cap, S)
                if shift_mask is not None:
                    mask = mask + shift_mask[pos][:, None]
                att = self.attend(q, k_all[win], v_all[win], mask)
                rows.append((win[:, None].expand_as(pos)[valid], pos[valid]))
                values.append(att[valid])
        projected = self.proj(torch.cat(values))
        out[torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])] = projected.to(out.dtype)
        return out


def _blend(new: torch.Tensor, old: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return new * keep + old * (1 - keep)


class InterIntraBlock(nn.Module):
    """One (masked) inter&intra-frame attention block; odd blocks shift the windows by half a window.

    forward(x, neighbors, layout, state, control) -> (x, new_state, keep_ratio or None)
      x: (b, h, w, C) current frame tokens; neighbors: (b, 2, h, w, C) LN'd aligned previous frames.
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

    def _to_windows(self, x: torch.Tensor) -> torch.Tensor:
        """(b, t, Hp, Wp, C) -> (b*nW, t*Wh*Ww, C), rolled by half a window first for shifted blocks.

        The original also rolls time by Wt, which is a no-op on a Wt-frame window, so only space is rolled."""
        _, wh, ww = self.window_size
        if self.shifted:
            x = torch.roll(x, (-(wh // 2), -(ww // 2)), dims=(2, 3))
        return rearrange(x, 'b t (nh wh) (nw ww) c -> (b nh nw) (t wh ww) c', wh=wh, ww=ww)

    def _to_image(self, x: torch.Tensor, batch: int, hp: int, wp: int, h: int, w: int) -> torch.Tensor:
        """(b*nW, Wh*Ww, ...) current-frame windows -> (b, h, w, ...), undoing the shift and the padding."""
        _, wh, ww = self.window_size
        x = rearrange(x, '(b nh nw) (wh ww) ... -> b (nh wh) (nw ww) ...', b=batch, nh=hp // wh, wh=wh, ww=ww)
        if self.shifted:
            x = torch.roll(x, (wh // 2, ww // 2), dims=(1, 2))
        return x[:, :h, :w]

    def forward(self, x: torch.Tensor, neighbors: torch.Tensor, layout: AttentionLayout, state: BlockState | None,
                control: MaskControl) -> tuple[torch.Tensor, BlockState, torch.Tensor | None]:
        b, h, w, _ = x.shape
        seq = self.norm1(torch.cat([neighbors, x.unsqueeze(1)], dim=1))
        seq = F.pad(seq, (0, 0, 0, layout.pad_w, 0, layout.pad_h))  # zero tokens after the norm, as the original
        hp, wp = h + layout.pad_h, w + layout.pad_w
        window = self._to_windows(seq)
        current = window[:, -window.shape[1] // self.window_size[0]:]
        groups = layout.groups if self.shifted else None

        keep = None
        if control.use_mask and self.attn.predmask is not None and state is not None:
            logits = self.attn.predmask((current.detach() - state.tokens).abs())
            keep = keep_decision(logits, b, self.training, control)
        sparse = keep is not None and control.sparse and not self.training

        if sparse:
            attn_out = self.attn.forward_kept(current, window, groups, keep.bool(), state.attn_out)
        else:
            attn_out = self.attn(current, window, groups)
            if keep is not None:
                attn_out = _blend(attn_out, state.attn_out, keep.unsqueeze(-1))
        x = x + self.drop_path(self._to_image(attn_out, b, hp, wp, h, w))

        if keep is None:
            hidden = self.drop_path(self.mlp(self.norm2(x)))
        else:
            keep_img = self._to_image(keep, b, hp, wp, h, w)
            if sparse:
                selected = keep_img.bool()
                hidden = state.mlp_out.clone()
                hidden[selected] = self.mlp(self.norm2(x[selected])).to(hidden.dtype)
            else:
                hidden = _blend(self.drop_path(self.mlp(self.norm2(x))), state.mlp_out, keep_img.unsqueeze(-1))
        x = x + hidden
        ratio = None if keep is None else keep.mean()
        return x, BlockState(current.detach(), attn_out.detach(), hidden.detach()), ratio


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

    forward(frames, states, control, layout, use_checkpoint) -> (features, new_states, keep_ratios)
      frames: (n, 3, C, h, w) = [aligned t-2, aligned t-1, current]; states: one BlockState per block or None
      (first frame); keep_ratios: one entry per block (None where no mask acted).

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

    def forward(self, frames: torch.Tensor, states: list[BlockState] | None, control: MaskControl,
                layout: AttentionLayout, use_checkpoint: bool
                ) -> tuple[torch.Tensor, list[BlockState], list[torch.Tensor | None]]:
        center = frames[:, -1]
        tokens = self.patch_embed.norm(frames.permute(0, 1, 3, 4, 2))
        neighbors, x = tokens[:, :-1], tokens[:, -1]
        new_states, ratios = [], []
        block_index = 0
        for layer in self.layers:
            shortcut = x
            for block in layer.residual_group.blocks:
                state = None if states is None else states[block_index]
                if use_checkpoint and self.training and torch.is_grad_enabled():
                    x, state, ratio = checkpoint(block, x, neighbors, layout, state, control, use_reentrant=False)
                else:
                    x, state, ratio = block(x, neighbors, layout, state, control)
                new_states.append(state)
                ratios.append(ratio)
                block_index += 1
            x = layer.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + shortcut
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
                  layout: AttentionLayout) -> tuple[list[torch.Tensor], list[list[torch.Tensor | None]]]:
        """Run one branch over the clip; returns its per-frame features (in time order) and keep ratios per
        step (in processing order)."""
        t = len(inputs)
        backward = branch.startswith('backward')
        order = range(t - 1, -1, -1) if backward else range(t)
        # flows[:, flow_of[i]] aligns the previously processed frame to frame i
        flow_of = (lambda i: i) if backward else (lambda i: i - 1)
        module = self.patch_align[branch]
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
            feature, states, step_ratios = module(frames, states, control, layout, self.use_checkpoint)
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
        layout = attention_layout(n, hp, wp, self.window_size, padded.device)
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
