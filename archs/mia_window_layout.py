"""Where the tokens of a frame sit in MIA-VSR's / IIA-VSR's attention windows (:class:`WindowLayout`), and the
relative-position index of a window (:func:`relative_position_index`); registers nothing.

Tokens stay in window rows through the blocks of a residual group: going between an unshifted and a shifted
block is one row gather (roll and partition in one index), and only the group's convolution sees the image
layout. The picture, for a batch of one 12x20 frame and 8x8 windows (Wh = Ww = 8, L = Wh*Ww = 64 tokens)::

    frame (b, h, w, C), zero-padded to (hp, wp) = (16, 24)     window rows (b * nW * L, C), nW = 6 per sample
    +--------+--------+--------+                                rows    0 ..  63   window 0 of sample 0
    | win 0  | win 1  | win 2  |     windows(image, s)          rows   64 .. 127   window 1
    |        |        |        |     gather[s] ------------>    ...                (row-major in a window:
    +--------+--------+--------+                                rows  320 .. 383   window 5   row y*Ww + x)
    | win 3  | win 4  | win 5  |     image(rows, s)             rows  384 .. 767   sample 1 (batch-major) ...
    |........|........|........| <-- scatter[s] (drops pad)
    +--------+--------+--------+     ``.`` = padding rows (``pad[s]``, zero after the norm)

    shifted layout (s = 1): the padded frame rolled by (-Wh/2, -Ww/2) first, so a window straddles four
    regions of the unshifted grid; within a sample its windows are then sorted by shift-mask pattern:
    +--------+--------+--------+
    |   A    |   A    |   B    |   A: all tokens from one region (pattern 0); B (right edge), C (bottom
    +--------+--------+--------+   edge), D (corner): tokens wrapped around from 2 or 4 regions (Swin's 9
    |   C    |   C    |   D    |   regions, -100 between them). Rows: grouped by pattern (A A first);
    +--------+--------+--------+   ``groups[1]`` lists the (start, stop, pattern) runs (see ``chunks``).

    switch(rows, s): rows of layout 1 - s -> rows of layout s in one ``index_select`` (undo one roll, apply
    the other). Keys/values of a window: ``aligned_windows`` puts the Wt - 1 = 2 aligned frames' L tokens of
    the same window side by side (2L rows), the current frame's L tokens follow (S = Wt*L keys; in inference L
    rows are left for them, which each block fills).
"""
from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange

SHIFT_MASK_VALUE = -100.0  # the original's additive mask value between regions of a shifted window (not -inf)


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
    and a shifted (index 1) block (the picture: this module's docstring); built once per forward call.

    The frame is zero-padded at the bottom/right to the window multiple and, for shifted blocks, rolled by
    half a window (the original also rolls time by Wt, a no-op on a Wt-frame window). Rows are batch-major,
    ``tokens`` (Wh*Ww) consecutive rows form a window. Within a sample the shifted layout's windows are sorted
    by their shift-mask pattern (Swin's 9 regions, value -100); ``groups[s]`` lists ``(start, stop, pattern)``
    window ranges (never across samples), ``shift_masks[s]`` the (patterns, L, S) additive masks,
    ``window_pattern[s]`` each window's pattern. ``pad[s]`` marks padding rows (b*nW, L), ``pad_rows[s]``
    their row indices, ``key_pad[s]`` padding keys (b*nW, S) or None.
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
            row_index = torch.empty_like(where)
            row_index[where] = torch.arange(where.numel(), device=device)
            positions.append(where)
            row_of.append(row_index)
            pad = ~inside.flatten()[where]
            self.gather.append(image_index.flatten()[where])
            self.scatter.append(row_index[padded[:, :height, :width].flatten()])
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
        self._aligned: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # aligned_windows' rows (_aligned_rows)

    def chunks(self, shifted: bool, limit: int, across: bool) -> list[tuple[slice, int | None]]:
        """Window ranges of at most ``limit`` windows covering the rows of a (shifted) layout in order, each with
        the shift-mask pattern all its windows share, or None where they have several. ``across`` False: ranges
        within ``groups[shifted]`` (one pattern, one sample each); True: ranges across samples and patterns (few
        large calls: what pays where every op is a kernel launch, or saved for autograd)."""
        if not across:
            return [(slice(first, min(first + limit, stop)), pattern)
                    for start, stop, pattern in self.groups[shifted] for first in range(start, stop, limit)]
        groups = self.groups[shifted]
        spans = []
        for first in range(0, groups[-1][1], limit):
            stop = min(first + limit, groups[-1][1])
            patterns = {pattern for start, end, pattern in groups if start < stop and end > first}
            spans.append((slice(first, stop), patterns.pop() if len(patterns) == 1 else None))
        return spans

    def windows(self, image: torch.Tensor, shifted: bool) -> torch.Tensor:
        """(b, h, w, C) -> (rows, C) in the layout of a (shifted) block; padding rows are zero."""
        rows = image.reshape(-1, image.shape[-1]).index_select(0, self.gather[shifted])
        if self.has_padding:
            rows.index_fill_(0, self.pad_rows[shifted], 0.0)
        return rows

    def aligned_windows(self, frames: torch.Tensor, shifted: bool, spare_rows: bool = False) -> torch.Tensor:
        """(b, t, h, w, C) -> (b*nW, t*L, C): each window's tokens of the t frames, frame after frame; with
        ``spare_rows``, (b*nW, (t+1)*L, C): then L spare rows (unspecified values) for the current frame's tokens,
        which ``InterIntraWindowAttention.keys`` writes in inference before anything reads them (under autograd
        they would only take memory). One gather (the per-frame gathers and their concatenation were three passes
        over a step's largest tensor: 11 against 4 ms at 180x320 LR)."""
        t, channels = frames.shape[1], frames.shape[-1]
        index, pad_rows = self._aligned_rows(t, shifted, spare_rows)
        rows = frames.reshape(-1, channels).index_select(0, index)
        if self.has_padding:
            rows.index_fill_(0, pad_rows, 0.0)
        return rows.view(-1, (t + spare_rows) * self.tokens, channels)

    def _aligned_rows(self, frames: int, shifted: bool, spare_rows: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(index, pad_rows) of :meth:`aligned_windows`: the rows of the flattened (b, t, h, w) frames in its order
        (spare rows read row 0), and its output rows that are padding (the spare rows are not); built once."""
        key = (frames, shifted, spare_rows)
        if key not in self._aligned:
            pixels = self.height * self.width
            gather = self.gather[shifted].view(self.batch, -1, self.tokens)  # rows of the (b, h, w) frame
            sample = torch.arange(self.batch, device=self.device).view(-1, 1, 1)
            first = gather + sample * (frames - 1) * pixels  # frame 0 of each sample in the (b, t, h, w) rows
            per_frame = [first + f * pixels for f in range(frames)] + [torch.zeros_like(first)] * spare_rows
            pad = self.pad[shifted][:, None].expand(-1, frames + spare_rows, -1).clone()
            pad[:, frames:] = False
            self._aligned[key] = torch.stack(per_frame, 2).flatten(), torch.nonzero(pad.flatten()).squeeze(1)
        return self._aligned[key]

    def image(self, rows: torch.Tensor, shifted: bool) -> torch.Tensor:
        """(rows, C) of a (shifted) layout -> (b, h, w, C) without the padding."""
        return rows.index_select(0, self.scatter[shifted]).view(self.batch, self.height, self.width, -1)

    def switch(self, rows: torch.Tensor, shifted: bool) -> torch.Tensor:
        """Rows of the other layout -> rows of the layout of a (shifted) block."""
        return rows.index_select(0, self.switch_index[shifted])
