"""Inter&intra-frame window attention of MIA-VSR / IIA-VSR (:class:`InterIntraWindowAttention`) and the
tensors a block derives from its parameters for it (:class:`BlockConstants`); registers nothing.

Queries are the current frame's tokens of a 3x8x8 window, keys/values all 192 tokens of the window (the
current frame and the two flow-aligned previous outputs), with a relative-position bias table indexed
(64, 192). The projections take tokens normalised without affine (:func:`normalise`): each block's ``norm1``
affine is folded into the weights (:meth:`vsrkit.archs.mia_block.InterIntraBlock.constants`). On the CPU, within a
run of windows with one shift-mask pattern, attention is one SDPA call per WINDOW_CHUNK windows with a broadcast
(1, heads, L, S) float mask, which keeps CPU SDPA on its fused kernel; on CUDA a call spans samples and patterns,
each window with its own mask (:func:`vsrkit.archs.mia_block.spans_pay`). In CPU eval, a block with enough windows
hands its chunks to single-threaded workers (:mod:`vsrkit.utils.chunk_workers`), as many chunks of at most
WINDOW_CHUNK windows as a multiple of the workers, the costliest first: they meet once per call instead of at every
op's barrier.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from vsrkit.archs.mia_mask import MaskPredictor
from vsrkit.archs.mia_window_layout import WindowLayout, relative_position_index
from vsrkit.utils.chunk_workers import chunk_plan, map_chunks

# windows a block computes at a time: few, large parallel regions (a barrier stalls whenever one thread is
# descheduled: 16 windows per chunk made a 180x320 block ~3x slower than 256 on a loaded 2-core machine,
# benchmarks/miavsr_speed.py); temporaries stay bounded (~50 MB of keys/values at the REDS width)
WINDOW_CHUNK = 256
# windows a worker must get for the chunk workers to pay (vsrkit.utils.chunk_workers). Measured, MIA-VSR eval,
# 2 cores: chunks of 32 windows (64x64 LR) 12 % slower than one thread team on a quiet machine; chunks of 256
# windows (180x320) on par quiet and 1.6x faster beside a busy process
MIN_WINDOWS_PER_WORKER = 128
PARTIAL_FILL = 0.75  # sparse path: a chunk of partly kept windows holds windows of >= this share of its largest


class GatherShapes(NamedTuple):
    """The shapes of the sparse path's gathered GEMMs and attention calls (``mia_block.gather_shapes``)."""

    whole_slack: int  # a window missing at most this many kept tokens is computed whole (all its queries)
    query_bucket: int  # a chunk's queries per window: its largest kept count rounded up to a multiple of this
    row_bucket: int  # the MLP's gathered rows: padded to a multiple of this


EXACT_SHAPES = GatherShapes(whole_slack=8, query_bucket=1, row_bucket=1)  # as many as there are kept tokens


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

    def with_one_aligned_frame(self) -> BlockConstants:
        """These constants for keys whose aligned frames are one frame repeated (a branch's first two steps, where
        the original attends to the same frame twice): the window's keys are that frame's L tokens, once, and the
        current frame's, S = 2L.

        A key and value repeated with biases b_1, b_2 contribute e^(s + b_1) + e^(s + b_2) = e^(s + log(e^b_1 +
        e^b_2)) to the softmax's sums, the same as one key with the bias logaddexp(b_1, b_2): the same function
        with a third fewer keys, so a third less key/value projection and attention at those steps.
        """
        masks, tokens = self.attn_masks, self.attn_masks.shape[1]
        if masks.shape[-1] != 3 * tokens:
            raise ValueError(f'with_one_aligned_frame: masks of 3 frames of {tokens} keys expected, got {masks.shape[-1]}')
        merged = torch.logaddexp(masks[..., :tokens], masks[..., tokens:2 * tokens])
        return self._replace(attn_masks=torch.cat([merged, masks[..., 2 * tokens:]], -1))

    def in_dtype(self, dtype: torch.dtype) -> BlockConstants:
        """These constants as the blocks read them under autocast: the attention masks (SDPA takes them in the
        query's dtype) and the folded projections in ``dtype``, cast once per branch call instead of for each chunk
        of windows (autocast caches its casts of parameters, not of tensors computed from them; 1x5x3x64x64 CPU
        bf16: masks 0.04-0.09 s, projections ~0.1 s of a 4.4 s call). The mask predictor's stay as they are (its
        matrix-vector product runs in fp32 under autocast, see InterIntraBlock.forward)."""
        return self._replace(q_weight=self.q_weight.to(dtype), q_bias=self.q_bias.to(dtype),
                             kv_weight=self.kv_weight.to(dtype), pad_kv=self.pad_kv.to(dtype),
                             proj_bias=self.proj_bias.to(dtype), attn_masks=self.attn_masks.to(dtype))


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

    def keys(self, aligned: torch.Tensor, current: torch.Tensor, keys: int) -> torch.Tensor:
        """(n, S, C) normalised tokens of the ``keys`` = S keys/values of n windows: ``aligned`` (n, S-L, C), the
        aligned frames' tokens, or (n, S, C) with L spare rows after them
        (``WindowLayout.aligned_windows(spare_rows=True)``), and ``current`` (n, L, C), the current frame's. In
        inference ``current`` is written into the spare rows (``aligned``, a view of the step's tensor that every
        block of the step reads, is not copied for each block; in the autocast dtype, it is not cast for each
        either); otherwise it is concatenated."""
        tokens = current.shape[1]
        if torch.is_grad_enabled() or aligned.shape[1] < keys:
            return torch.cat([aligned[:, :keys - tokens], current], 1)
        aligned[:, -tokens:] = current
        return aligned

    def keys_values(self, keys: torch.Tensor, key_pad: torch.Tensor | None, consts: BlockConstants) -> torch.Tensor:
        """(n, S, 2C) keys and values of n windows from their normalised tokens ``keys`` (n, S, C) (:meth:`keys`);
        key_pad: (n, Wt*L) padding keys of the window's frames or None (padding is the same in every frame: its
        last S columns are those of ``keys``)."""
        kv = F.linear(keys, consts.kv_weight)
        if key_pad is not None:
            kv[key_pad[:, key_pad.shape[1] - kv.shape[1]:]] = consts.pad_kv.to(kv.dtype)
        return kv

    def attend(self, queries: torch.Tensor, kv: torch.Tensor, consts: BlockConstants,
               mask: torch.Tensor) -> torch.Tensor:
        """Projected attention output (n, l, C) of normalised ``queries`` (n, l, C) on the keys/values of their
        windows; mask: (1 or n, heads, l, S) additive bias and shift mask."""
        # as few ops as will do: at 64x64 LR a block is ~12 ms, and each op call costs 1-4 us of Python and dispatch
        (n, queries_per_window), heads = queries.shape[:2], (self.num_heads, self.dim // self.num_heads)
        q = F.linear(queries, consts.q_weight, consts.q_bias).view(n, queries_per_window, *heads).transpose(1, 2)
        k, v = kv.view(n, kv.shape[1], 2, *heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask if mask.dtype == q.dtype else mask.to(q.dtype))
        return F.linear(out.transpose(1, 2).reshape(n, queries_per_window, self.dim), self.proj.weight, consts.proj_bias)

    def forward(self, windows: torch.Tensor, aligned: torch.Tensor, key_pad: torch.Tensor | None,
                consts: BlockConstants, mask: torch.Tensor) -> torch.Tensor:
        """Projected attention output (n, L, C) of every current-frame token of n windows."""
        keys = self.keys(aligned, windows, consts.attn_masks.shape[-1])
        return self.attend(windows, self.keys_values(keys, key_pad, consts), consts, mask)

    def forward_kept(self, current: torch.Tensor, aligned: torch.Tensor, consts: BlockConstants,
                     layout: WindowLayout, shifted: bool, kept_mask: torch.Tensor, previous: torch.Tensor,
                     shapes: GatherShapes = EXACT_SHAPES) -> torch.Tensor:
        """Projected attention output (rows, C) for the kept tokens; the others take ``previous``, which in inference
        (autograd off) is written into and returned: it is the block's previous output, in a state the block consumes
        (at 180x320 LR a copy of it was a full-frame pass per block and frame).

        current: (rows, C) normalised current-frame tokens of the layout of a (shifted) block; aligned: as
        :meth:`keys` takes it; kept_mask: bool (b*nW, L). Windows without a kept token are skipped
        (not even k/v). A window with at most ``shapes.whole_slack`` tokens not kept is computed whole, with the
        broadcast mask of its shift pattern. The other windows are sorted by their number of kept tokens and taken
        up to a chunk's size at a time (while they hold at least PARTIAL_FILL of the chunk's largest count); a
        chunk's queries are each window's kept tokens, padded to the chunk's largest count rounded up to a multiple
        of ``shapes.query_bucket``, with their mask rows gathered per query.
        Chunks: at most WINDOW_CHUNK windows, evened out between the chunk workers (module docstring).
        """
        out = previous.clone() if torch.is_grad_enabled() else previous
        tokens = layout.tokens
        windows = current.view(-1, tokens, self.dim)
        key_count = consts.attn_masks.shape[-1]
        keys = self.keys(aligned, windows, key_count)  # every window's, gathered per chunk
        key_pad = layout.key_pad[shifted]
        kept_counts = kept_mask.sum(1)
        whole = kept_counts >= tokens - shapes.whole_slack
        pattern = layout.window_pattern[shifted]
        whole_windows = torch.nonzero(whole).squeeze(1)
        whole_windows = whole_windows[torch.argsort(pattern[whole_windows], stable=True)]
        partial = torch.nonzero((kept_counts > 0) & ~whole).squeeze(1)
        partial = partial[torch.argsort(kept_counts[partial], descending=True, stable=True)]
        every = torch.arange(tokens, device=kept_mask.device)
        masks = consts.attn_masks.flatten(0, 1)  # (patterns * L, heads, S): a query's mask row to gather
        active = whole_windows.numel() + partial.numel()
        workers, limit = chunk_plan(active, WINDOW_CHUNK, MIN_WINDOWS_PER_WORKER, current.device)

        def attend(job: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            """For windows ``which`` computed whole (rows None, mask broadcast): (which, their outputs (n, L, C)).
            Else (rows, values) of the kept queries among the token ``rows`` (n, l) of windows ``which``, ``valid``
            (n, l) marking them (the others pad the chunk); mask: (n, l) rows of ``masks``, each query's."""
            which, rows, valid, mask = job
            kv = self.keys_values(keys.index_select(0, which),
                                  None if key_pad is None else key_pad.index_select(0, which), consts)
            if rows is None:
                return which, self.attend(windows.index_select(0, which), kv, consts, mask)
            queries = current.index_select(0, rows.flatten()).view(*rows.shape, self.dim)
            # gathered after k/v: the k/v GEMM measured slower right after this gather
            mask = masks.index_select(0, mask.flatten()).view(*rows.shape, *masks.shape[1:]).transpose(1, 2)
            return rows[valid], self.attend(queries, kv, consts, mask)[valid]

        def queries(count: int) -> int:
            """Queries per window of a chunk whose largest kept count is ``count``."""
            return min(tokens, -(-count // shapes.query_bucket) * shapes.query_bucket)

        jobs = []
        runs, sizes = torch.unique_consecutive(pattern[whole_windows], return_counts=True)
        start = 0
        for run, size in zip(runs.tolist(), sizes.tolist()):
            mask = consts.attn_masks[run].transpose(0, 1)[None]
            for first in range(start, start + size, limit):
                which = whole_windows[first:min(first + limit, start + size)]
                jobs.append((which, None, None, mask))
            start += size
        if partial.numel():
            # per window, its kept token positions first (in order), then the others: their rows, their queries'
            # rows of ``masks``, and which are kept (for all partial windows at once, each chunk takes a slice)
            kept_first = torch.argsort((~kept_mask.index_select(0, partial)).to(torch.int8), dim=1, stable=True)
            partial_rows = partial[:, None] * tokens + kept_first
            partial_mask_rows = pattern[partial, None] * tokens + kept_first
            counts = kept_counts[partial]
            partial_valid = every < counts[:, None]
            counts = counts.tolist()  # descending
            first = 0
            while first < len(counts):
                cap, stop = queries(counts[first]), min(first + limit, len(counts))
                # queries are padded to the chunk's largest count: end the chunk where that would waste much
                stop = next((i for i in range(first + 1, stop) if queries(counts[i]) < PARTIAL_FILL * cap), stop)
                chunk = slice(first, stop)
                jobs.append((partial[chunk], partial_rows[chunk, :cap], partial_valid[chunk, :cap],
                             partial_mask_rows[chunk, :cap]))
                first = stop
        if jobs:
            # FLOPs of a job over 4C: keys/values of its windows' S tokens, q/proj/attention of its queries
            costs = [which.numel() * (key_count * self.dim + (tokens if rows is None else rows.shape[1])
                                      * (self.dim + key_count)) for which, rows, _, _ in jobs]
            # whole windows are written whole, a copy per window instead of selecting and copying rows (measured
            # 0.4 ms of a 12 ms block at 64x64, keep 0.9): their few rows not kept are saved first and put back
            unkept = (whole_windows[:, None] * tokens + every)[~kept_mask.index_select(0, whole_windows)]
            saved = out.index_select(0, unkept)
            by_window = out.view(-1, tokens, self.dim)
            for index, values in map_chunks(attend, jobs, workers, costs):  # not concatenated first: one copy less
                (by_window if values.dim() == 3 else out).index_copy_(0, index, values.to(out.dtype))
            out.index_copy_(0, unkept, saved)
        return out
