"""One (masked) inter&intra-frame attention block of MIA-VSR / IIA-VSR (:class:`InterIntraBlock`), the state it
hands to itself at the next frame (:class:`BlockState`) and the residual group of blocks (:class:`ResidualGroup`,
the original's ``RSTB``); registers nothing.

State between frames is passed explicitly as a :class:`BlockState` and returned anew (never a mutated list),
so a block is a pure function and gradient checkpointing recomputes exactly what the forward pass computed.

In eval mode (``sparse`` path) the kept tokens are gathered and only they go through the MLP; results are scattered
into the reused previous outputs. Where a block keeps less than GATHERED_BELOW of its tokens they are gathered for
the query projection, the attention and the output projection too (keys/values then come from every token of a
window that has a kept token; windows without one are skipped); where it keeps more, the attention of every token
is computed and the kept rows are selected. Under CPU autocast the gathered work takes few, recurring shapes
(:func:`gather_shapes`), and under CPU bf16 autocast the rows are carried in bf16 (:func:`residual_dtype`).
``MaskControl.sparse=False`` computes every token and then selects (the dense reference, the same function).

Each block's ``norm1`` affine (g, b) is folded into its projections (W diag(g), W b + c), so the two aligned
frames, which every block of a step attends to, are normalised and partitioned once per step
(:meth:`InterIntraBlock.constants`).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from vsrkit.archs.mia_attention import (EXACT_SHAPES, MIN_WINDOWS_PER_WORKER, WINDOW_CHUNK, BlockConstants,
                                       GatherShapes, InterIntraWindowAttention, normalise)
from vsrkit.archs.mia_mask import MaskControl, keep_decision
from vsrkit.archs.mia_window_layout import WindowLayout
from vsrkit.utils.chunk_workers import chunk_plan, map_chunks

# sparse path: a block keeping less than this share of its tokens gathers them for the attention too; from it on
# computing every token's attention and selecting is cheaper. Measured, one shifted block alternating in one process,
# fp32, 2 threads, AMX Xeon, time / the mask disabled (gathered against every token's attention; MLP rows gathered in
# both): 64x64 LR keep 0.25 0.80 against 0.90, 0.4 0.89/0.93, 0.45 0.94/0.93, 0.5 1.02/0.97, 0.6 1.07/0.97,
# 0.9 1.16/1.04; 180x320 LR keep 0.4 0.73/0.91, 0.5 0.88/0.90, 0.6 0.97/1.00, 0.75 1.06/1.00, 0.95 1.13/1.08.
# Computing every token with the dense path's selects instead took 1.09-1.15 at keep 0.25-1.0 (64x64). Under CPU
# bf16 autocast (AUTOCAST_SHAPES), the network alternating in one process: 1x5x3x64x64 3.83 s at 0.5 against 3.86 s
# at 0.35 and 3.90 s at 0.6; 1x3x3x180x320 28.65 s at 0.5 against 29.44 s at 0.7
GATHERED_BELOW = 0.5


class BlockState(NamedTuple):
    """What a block hands to the same block at the next frame (all detached, as in the original); rows in the
    block's window layout (see :class:`WindowLayout`)."""

    tokens: torch.Tensor  # current-frame tokens normalised before norm1's affine, zero at padding (R, C); or, see:
    attn_out: torch.Tensor  # attention-projection output (R, C)
    mlp_out: torch.Tensor  # MLP output, after drop path (R, C)
    # False: ``tokens`` holds the block's input rows instead, normalised where read (InterIntraBlock.previous_tokens).
    # Under autograd backward keeps that tensor anyway (the input of the block's checkpoint, or of its first norm):
    # normalised copies beside it took the peak of an fp16 step of the REDS recipe from 24.4 to 32.4 GB (H200). In
    # inference the extra norm per block and frame would cost up to 15 % (180x320 LR, 2 threads)
    normalised: bool = True


def _select(new: torch.Tensor, old: torch.Tensor, keep_weight: torch.Tensor,
            kept_mask: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``new`` where kept, of ``old`` elsewhere: a straight-through blend with the float 0/1
    ``keep_weight`` (n, L) in training (``kept_mask`` None); in eval, ``old``'s rows copied over the rows of
    ``new`` where the bool ``kept_mask`` (n, L) is False (``new``, a fresh output that nothing saves for
    backward, is overwritten: a third of the time of torch.where, measured)."""
    if kept_mask is None:
        keep_weight = keep_weight.reshape(-1, 1).to(new.dtype)  # fp32 decisions would promote half-precision rows
        return new * keep_weight + old * (1 - keep_weight)
    reused_rows = torch.nonzero(~kept_mask.reshape(-1)).squeeze(1)
    return new.index_copy_(0, reused_rows, old.index_select(0, reused_rows))


def _joined(chunks: list[torch.Tensor]) -> torch.Tensor:
    """The chunks' rows in one tensor (no copy where there is a single chunk)."""
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


class InterIntraBlock(nn.Module):
    """One (masked) inter&intra-frame attention block; odd blocks shift the windows by half a window.

    forward(x, aligned, consts, layout, state, control) -> (x, new_state or None, keep_ratio or None)
      x: (rows, C) current-frame tokens in this block's window layout (``layout.windows(image, shifted)``);
      aligned: (b*nW, 2L, C) the two aligned frames in the same layout, normalised without affine, in inference
      with L spare rows (``layout.aligned_windows(normalise(tokens), shifted, spare_rows)``); consts:
      ``self.constants(layout)``; state: the previous frame's, consumed: in inference (autograd off) the gather/scatter
      path writes the new outputs into its ``attn_out`` and ``mlp_out``. The new state is None when no mask will read
      it (no predictor, or ``use_mask`` off).

    The block runs WINDOW_CHUNK windows at a time from the norm to the MLP, so its temporaries stay bounded
    whatever the frame size while its parallel regions stay few and large (see ``mia_attention.WINDOW_CHUNK``;
    on a quiet machine 16 windows per chunk were measured ~20 % faster than 32 for the masked block — the L2
    cache —, but under load the thousands of small regions of 16-window chunks stalled at their barriers). In CPU
    eval, with enough windows, the chunks go to single-threaded workers (``mia_attention``'s docstring).
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
        current = self.normalised(x, layout)

        keep_weight = kept_mask = None  # float 0/1 (b*nW, L) decisions; in eval also as bool
        if control.use_mask and consts.mask_weight is not None and state is not None:
            change = torch.sub(current.detach(), self.previous_tokens(state, layout)).abs_()
            # one output: a matrix-vector product (CPU autocast leaves addmv in fp32; it cast the whole frame of
            # changes to bf16 for F.linear, 4.5x the time, and rounded the logits the decisions threshold), in the
            # predictor's dtype (rows carried in bf16, see residual_dtype, give a bf16 change)
            logits = torch.addmv(consts.mask_bias, change.to(consts.mask_weight.dtype), consts.mask_weight[0])
            keep_weight = keep_decision(logits.view(-1, layout.tokens), layout.batch, self.training, control)
            if not self.training:
                kept_mask = keep_weight.bool()
                if layout.has_padding:  # padding tokens are cropped from the output: never worth computing
                    kept_mask &= ~layout.pad[shifted]

        with_state = control.use_mask and consts.mask_weight is not None
        if kept_mask is not None and control.sparse:
            gathered = int(kept_mask.sum()) < GATHERED_BELOW * kept_mask.numel()
            out, attn_out, hidden = self._forward_kept(x, current, aligned, consts, layout, state, kept_mask,
                                                       gathered)
        else:
            out, attn_out, hidden = self._forward_all(x, current, aligned, consts, layout, state, keep_weight,
                                                      kept_mask, with_state)
        ratio = None if keep_weight is None else keep_weight.mean()
        new_state = None
        if with_state:
            kept_inputs = torch.is_grad_enabled()
            new_state = BlockState((x if kept_inputs else current).detach(), attn_out.detach(), hidden.detach(),
                                   normalised=not kept_inputs)
        return out, new_state, ratio

    def normalised(self, x: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """Rows normalised without affine, zero at padding (the original zero-pads after the norm)."""
        tokens = normalise(x)
        if layout.has_padding:
            tokens.index_fill_(0, layout.pad_rows[self.shifted], 0.0)
        return tokens

    def previous_tokens(self, state: BlockState, layout: WindowLayout) -> torch.Tensor:
        """The previous frame's normalised rows of this block (what the change for the keep decision is taken from)."""
        return state.tokens if state.normalised else self.normalised(state.tokens, layout)

    def _forward_all(self, x: torch.Tensor, current: torch.Tensor, aligned: torch.Tensor, consts: BlockConstants,
                     layout: WindowLayout, state: BlockState | None, keep_weight: torch.Tensor | None,
                     kept_mask: torch.Tensor | None, with_state: bool
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Every token computed, chunk by chunk; with a mask, tokens not kept take the previous outputs."""
        tokens = layout.tokens
        windows = current.view(-1, tokens, x.shape[-1])
        # per-sample stochastic depth factors, drawn once for the frame as DropPath on the whole frame would, per row
        drop = [self.drop_path(x.new_ones(layout.batch, 1)).repeat_interleave(layout.windows_per_sample * tokens, 0)
                for _ in range(2)] if self.training else None
        workers, chunks = self._window_chunks(layout, x.device)

        def run(chunk: tuple[slice, int | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            win = chunk[0]
            row = slice(win.start * tokens, win.stop * tokens)
            attn_out = self._chunk_attention(chunk, windows, aligned, consts, layout)
            if keep_weight is not None:
                attn_out = _select(attn_out, state.attn_out[row], keep_weight[win],
                                   None if kept_mask is None else kept_mask[win])
            y = x[row] + (attn_out if drop is None else attn_out * drop[0][row].to(attn_out.dtype))
            hidden = self.mlp(self.norm2(y))
            if drop is not None:
                hidden = hidden * drop[1][row].to(hidden.dtype)  # in its dtype, as DropPath on it would
            if keep_weight is not None:
                hidden = _select(hidden, state.mlp_out[row], keep_weight[win],
                                 None if kept_mask is None else kept_mask[win])
            return y + hidden, attn_out, hidden

        sizes = [win.stop - win.start for win, _ in chunks]
        outs, attn_outs, hiddens = zip(*map_chunks(run, chunks, workers, sizes))
        if not with_state:
            return _joined(outs), None, None
        return _joined(outs), _joined(attn_outs), _joined(hiddens)

    def _window_chunks(self, layout: WindowLayout, device: torch.device) -> tuple[int, list[tuple[slice, int | None]]]:
        """(workers, chunks of ``layout.chunks``) for computing every window of the layout (module docstring of
        ``mia_attention``, :func:`spans_pay`)."""
        workers, limit = chunk_plan(layout.batch * layout.windows_per_sample, WINDOW_CHUNK, MIN_WINDOWS_PER_WORKER,
                                    device)
        return workers, layout.chunks(self.shifted, limit, across=workers == 1 and spans_pay(device))

    def _chunk_attention(self, chunk: tuple[slice, int | None], windows: torch.Tensor, aligned: torch.Tensor,
                         consts: BlockConstants, layout: WindowLayout) -> torch.Tensor:
        """Projected attention output (rows, C) of every current-frame token of a chunk of ``layout.chunks``: a
        window range and the shift-mask pattern its windows share (None: each window's own mask)."""
        win, pattern = chunk
        if pattern is None:  # (n, heads, L, S): each window's own
            mask = consts.attn_masks.transpose(1, 2).index_select(0, layout.window_pattern[self.shifted][win])
        else:
            mask = consts.attn_masks[pattern].transpose(0, 1)[None]  # (1, heads, L, S): broadcast
        key_pad = layout.key_pad[self.shifted]
        return self.attn(windows[win], aligned[win], None if key_pad is None else key_pad[win], consts,
                         mask).view(-1, windows.shape[-1])

    def _forward_kept(self, x: torch.Tensor, current: torch.Tensor, aligned: torch.Tensor, consts: BlockConstants,
                      layout: WindowLayout, state: BlockState, kept_mask: torch.Tensor, gathered: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eval: only kept tokens go through the MLP (gather/scatter), and, where ``gathered``, through q, attention
        and projection; else the attention of every token is computed and the kept rows are selected."""
        shapes = gather_shapes(x.device)
        if gathered:
            attn_out = self.attn.forward_kept(current, aligned, consts, layout, self.shifted, kept_mask,
                                              state.attn_out, shapes)
        else:
            workers, chunks = self._window_chunks(layout, x.device)
            windows = current.view(-1, layout.tokens, x.shape[-1])
            outs = map_chunks(lambda chunk: self._chunk_attention(chunk, windows, aligned, consts, layout), chunks,
                              workers, [win.stop - win.start for win, _ in chunks])
            attn_out = _select(_joined(outs), state.attn_out, None, kept_mask)
        x = x + attn_out
        kept_rows = torch.nonzero(kept_mask.flatten()).squeeze(1)
        bucket = shapes.row_bucket
        padding = (-kept_rows.numel()) % bucket
        padded_rows = torch.cat([kept_rows, kept_rows.new_zeros(padding)]) if padding else kept_rows  # pads: row 0
        kept = x.index_select(0, padded_rows)
        workers, rows = chunk_plan(kept.shape[0], WINDOW_CHUNK * layout.tokens, MIN_WINDOWS_PER_WORKER * layout.tokens,
                                   x.device)
        rows = -(-rows // bucket) * bucket
        mlp = map_chunks(lambda chunk: self.mlp(self.norm2(chunk)), kept.split(rows), workers)
        hidden = state.mlp_out.clone() if torch.is_grad_enabled() else state.mlp_out  # consumed (forward_kept)
        for chunk_rows, values in zip(kept_rows.split(rows), mlp):  # not concatenated first: one copy less
            hidden.index_copy_(0, chunk_rows, values[:chunk_rows.numel()].to(hidden.dtype))
        return x.add_(hidden), attn_out, hidden


# under CPU autocast, whose GEMMs (oneDNN) and SDPA are fastest on few shapes that recur (see gather_shapes)
AUTOCAST_SHAPES = GatherShapes(whole_slack=32, query_bucket=16, row_bucket=256)


def gather_shapes(device: torch.device) -> GatherShapes:
    """The shapes of the sparse path's gathered work: under CPU autocast AUTOCAST_SHAPES, else EXACT_SHAPES (as many
    queries and rows as there are kept tokens).

    Under CPU bf16 autocast oneDNN builds a kernel for each new GEMM shape (~0.3-0.6 ms; its primitive cache, 1024
    by default, keeps them), and the kept tokens' counts change with every mask: a bf16 MLP of ~2000 of 4096 rows,
    2 threads, took 4.2 ms unpadded against 1.1 ms padded to 256 rows (2.2 ms for all 4096 rows). Padded to 256
    rows a GEMM takes at most 64 shapes (chunks of at most WINDOW_CHUNK windows of 64 tokens). bf16 SDPA (64
    windows of 192 keys, heads of 20 channels) took 1.24 / 1.71 / 2.33 ms for 16 / 32 / 64 queries a window, but
    2.94-3.37 ms for 40-56 (2 threads, AMX Xeon): a window keeping at least 32 tokens is computed whole, the
    others' queries padded to 16 or 32. With these shapes the sparse path with the attention's tokens gathered
    (below GATHERED_BELOW) took 28.8 / 29.8 s (best / median, 2 pairs) against 32.4 / 32.7 s computing every
    token's attention (1x3x3x180x320, bf16), and 4.10 / 4.14 against 4.21 / 4.28 s at 1x5x3x64x64 (4 pairs).
    """
    return AUTOCAST_SHAPES if device.type == 'cpu' and torch.is_autocast_enabled('cpu') else EXACT_SHAPES


def residual_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype the transformer carries its rows in (the residual stream, hence the blocks' normalised tokens and
    states): bf16 in inference under CPU bf16 autocast, else None (as they come, fp32; autocast casts each GEMM's
    input). In fp32 under autocast every block paid mixed-dtype adds and casts of its rows (a bf16 + fp32 add of
    4096x120 took 110-240 us against 50 us for bf16 + bf16). Carried in bf16 (2 threads, AMX Xeon, alternating calls,
    best / median): 1x5x3x64x64 3.86 / 3.95 s against 4.02 / 4.14 s (6 calls each), at 65.0 dB PSNR against the fp32
    output (66.3 dB before); 1x3x3x180x320 24.96 / 25.20 s against 27.49 / 27.58 s for the previous version, which
    also cast the folded projections per chunk (4 calls each), at 64.4 dB (65.3). Only bf16: it has fp32's exponent
    range (a residual stream in fp16 may overflow)."""
    autocast = device.type == 'cpu' and torch.is_autocast_enabled('cpu') and not torch.is_grad_enabled()
    return torch.bfloat16 if autocast and torch.get_autocast_dtype('cpu') == torch.bfloat16 else None


def spans_pay(device: torch.device) -> bool:
    """Whether a block's chunks should span samples and shift patterns (each window's mask gathered where a chunk
    holds several) rather than keep to one pattern of one sample (a broadcast mask; chunk workers need those).

    On CUDA, where every op of a chunk is a kernel launch, they do: with chunks of one pattern of one sample, a shifted
    block of the REDS training batch (3 clips of 64x64 LR) ran 12 chunks instead of one and the recipe's fp16 training
    step took 3.2x the original's time; spanning, 0.85x (benchmarks/miavsr_train_step.py, H200). On the CPU they do
    not: a training step took 11 % longer with spans (the gathered masks and their gradient), eval on par (2 threads).
    """
    return device.type != 'cpu'


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

