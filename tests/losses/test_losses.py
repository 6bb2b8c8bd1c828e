"""Losses: basicsr's L1/MSE through the registry, SSIM against skimage, SSIMLoss and both published MaxEntLoss forms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data, filters
from skimage.metrics import structural_similarity

import vsrkit.losses  # noqa: F401  (registers our losses; must precede the basicsr imports below)
from basicsr.losses import build_loss
from basicsr.utils.registry import LOSS_REGISTRY
from vsrkit.losses.maxent_loss import MaxEntLoss
from vsrkit.losses.ssim_loss import SSIMLoss, ssim

CROP = 64


def _crops() -> list[np.ndarray]:
    """Three real RGB photos, cropped to CROP x CROP, float64 in [0, 1] (H, W, C)."""
    imgs = [data.astronaut()[180:180 + CROP, 200:200 + CROP], data.chelsea()[100:100 + CROP, 150:150 + CROP],
            data.coffee()[150:150 + CROP, 250:250 + CROP]]
    return [img.astype(np.float64) / 255 for img in imgs]


def _degrade(img: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 0.04, img.shape)
    return np.clip(filters.gaussian(img, sigma=1.0, channel_axis=-1) + noise, 0, 1)


def _sk_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5, full: bool = False):
    return structural_similarity(a, b, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                 data_range=data_range, channel_axis=-1, full=full)


def _to_torch(imgs: list[np.ndarray], dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).to(dtype)


@pytest.fixture(scope='module')
def photo_pairs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    clean = _crops()
    return clean, [_degrade(img, seed) for seed, img in enumerate(clean)]


# (a) basicsr's own pixel losses are the ones we use
@pytest.mark.parametrize('name, per_elem', [('L1Loss', [1.0, 1.0, 2.0]), ('MSELoss', [1.0, 1.0, 4.0])])
def test_basicsr_pixel_losses_resolve_and_match_hand_values(name, per_elem):
    cls = LOSS_REGISTRY.get(name)
    assert cls.__module__ == 'basicsr.losses.basic_loss'
    pred = torch.tensor([0.0, 2.0, 3.0]).view(1, 3, 1, 1)
    target = torch.ones(1, 3, 1, 1)
    e = per_elem
    assert cls(loss_weight=0.5)(pred, target).item() == pytest.approx(0.5 * sum(e) / 3)
    assert cls(loss_weight=2.0, reduction='sum')(pred, target).item() == pytest.approx(2.0 * sum(e))
    assert cls(reduction='none')(pred, target).flatten().tolist() == pytest.approx(e)
    weight = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert cls()(pred, target, weight).item() == pytest.approx((e[0] + e[2]) / 2)


# (b) SSIM equals skimage's on real photos
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_ssim_matches_skimage_on_photos(photo_pairs, dtype):
    clean, degraded = photo_pairs
    ours = ssim(_to_torch(clean, dtype), _to_torch(degraded, dtype))
    expected = [_sk_ssim(a, b) for a, b in zip(clean, degraded)]
    assert ours.shape == (3,)
    assert 0.3 < min(expected) < max(expected) < 0.95  # a real, non-trivial degradation
    np.testing.assert_allclose(ours.double().numpy(), expected, atol=1e-4, rtol=0)


def test_ssim_data_range_255(photo_pairs):
    clean, degraded = photo_pairs
    clean255 = [np.round(a * 255) for a in clean]
    degraded255 = [np.round(b * 255) for b in degraded]
    ours = ssim(_to_torch(clean255, torch.float32), _to_torch(degraded255, torch.float32), data_range=255.0)
    expected = [_sk_ssim(a, b, data_range=255.0) for a, b in zip(clean255, degraded255)]
    np.testing.assert_allclose(ours.double().numpy(), expected, atol=1e-4, rtol=0)


def test_ssim_other_window_matches_skimage_truncation(photo_pairs):
    # skimage's window for sigma=1.0 is 2 * int(3.5 * 1.0 + 0.5) + 1 = 9 taps.
    clean, degraded = photo_pairs
    ours = ssim(_to_torch(clean), _to_torch(degraded), window_size=9, sigma=1.0)
    expected = [_sk_ssim(a, b, sigma=1.0) for a, b in zip(clean, degraded)]
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4, rtol=0)


def test_ssim_clip_is_per_frame(photo_pairs):
    clean, _ = photo_pairs
    # A panning clip: frame t is the photo shifted by 2t pixels; the target is a degraded copy of each frame.
    src = [data.astronaut().astype(np.float64) / 255, data.coffee().astype(np.float64) / 255]
    frames = [[img[100 + 2 * t:100 + 2 * t + CROP, 120:120 + CROP] for t in range(3)] for img in src]
    noisy = [[_degrade(f, 10 * b + t) for t, f in enumerate(clip)] for b, clip in enumerate(frames)]
    x = torch.stack([_to_torch(clip, torch.float32) for clip in frames])  # (2, 3, 3, H, W)
    y = torch.stack([_to_torch(clip, torch.float32) for clip in noisy])
    ours = ssim(x, y)
    assert ours.shape == (2, 3)
    expected = [[_sk_ssim(f, g) for f, g in zip(fc, gc)] for fc, gc in zip(frames, noisy)]
    np.testing.assert_allclose(ours.double().numpy(), expected, atol=1e-4, rtol=0)


# (c) SSIMLoss
def test_ssim_loss_is_differentiable():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(1, 2, 12, 13, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 2, 12, 13, generator=gen, dtype=torch.float64)
    weight = torch.rand(1, 1, 12, 13, generator=gen, dtype=torch.float64)
    loss = SSIMLoss(alpha=0.1)  # both terms, through the weighted path
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~600 tiny forward passes: thread hand-offs would dominate on a busy machine
    try:
        assert torch.autograd.gradcheck(lambda p: loss(p, target, weight), (pred,))
    finally:
        torch.set_num_threads(threads)


def test_ssim_loss_alpha_forms(photo_pairs):
    clean, degraded = photo_pairs
    x, y = _to_torch(degraded), _to_torch(clean)
    s = np.array([_sk_ssim(a, b) for a, b in zip(degraded, clean)])
    mse = np.array([np.mean((a - b) ** 2) for a, b in zip(degraded, clean)])
    assert SSIMLoss()(x, y).item() == pytest.approx(np.mean(1 - s), abs=1e-6)
    mixed = 0.9 * mse + 0.1 * (1 - s)
    assert SSIMLoss(alpha=0.1, loss_weight=2.0)(x, y).item() == pytest.approx(2.0 * mixed.mean(), abs=1e-6)
    assert SSIMLoss(alpha=0.0)(x, y).item() == pytest.approx(F.mse_loss(x, y).item(), abs=1e-12)
    np.testing.assert_allclose(SSIMLoss(alpha=0.1, reduction='none')(x, y).numpy(), mixed, atol=1e-6)
    assert SSIMLoss(alpha=0.1, reduction='sum')(x, y).item() == pytest.approx(mixed.sum(), abs=1e-6)
    assert SSIMLoss()(y, y).item() == pytest.approx(0.0, abs=1e-12)


def test_ssim_loss_on_clip_reductions(photo_pairs):
    clean, degraded = photo_pairs
    x = _to_torch(degraded).view(1, 3, 3, CROP, CROP)  # one clip of three frames
    y = _to_torch(clean).view(1, 3, 3, CROP, CROP)
    per_frame = SSIMLoss(alpha=0.1, reduction='none')(x, y)
    assert per_frame.shape == (1, 3)
    expected = [0.9 * np.mean((a - b) ** 2) + 0.1 * (1 - _sk_ssim(a, b)) for a, b in zip(degraded, clean)]
    np.testing.assert_allclose(per_frame[0].numpy(), expected, atol=1e-6)
    assert SSIMLoss(alpha=0.1)(x, y).item() == pytest.approx(np.mean(expected), abs=1e-6)


@pytest.mark.parametrize('channels', [1, 3])
def test_ssim_loss_weight_map(photo_pairs, channels):
    clean, degraded = photo_pairs
    x, y = _to_torch(degraded), _to_torch(clean)
    rng = np.random.default_rng(1)
    w = rng.uniform(0, 1, (3, CROP, CROP, channels))
    w[:, :, :CROP // 2] = 0  # mask the left half
    weight = torch.from_numpy(w).permute(0, 3, 1, 2)
    got = SSIMLoss(alpha=0.1, reduction='none')(x, y, weight).numpy()
    r = 5  # the 11-tap window's radius
    for i, (a, b) in enumerate(zip(degraded, clean)):
        wi = np.broadcast_to(w[i], a.shape)
        smap = _sk_ssim(a, b, full=True)[1][r:-r, r:-r]
        wc = wi[r:-r, r:-r]
        dssim = np.sum(wc * (1 - smap)) / wc.sum()
        mse = np.sum(wi * (a - b) ** 2) / wi.sum()
        assert got[i] == pytest.approx(0.9 * mse + 0.1 * dssim, abs=1e-6)
    # The weight is normalised per image: a constant weight changes nothing.
    ref = SSIMLoss(alpha=0.1)(x, y)
    assert SSIMLoss(alpha=0.1)(x, y, torch.full((3, 1, CROP, CROP), 3.0, dtype=x.dtype)).item() == \
        pytest.approx(ref.item(), abs=1e-12)
    with pytest.raises(ValueError, match='weight'):
        SSIMLoss()(x, y, torch.ones(3, 2, CROP, CROP, dtype=x.dtype))


def test_ssim_loss_builds_from_options(photo_pairs):
    clean, degraded = photo_pairs
    loss = build_loss({'type': 'SSIMLoss', 'alpha': 0.1, 'data_range': 1.0})
    assert isinstance(loss, SSIMLoss) and loss.alpha == 0.1
    assert isinstance(build_loss({'type': 'MaxEntLoss', 'form': 'tv'}), MaxEntLoss)


# (d) MaxEntLoss, checked against an independent numpy computation
def _np_entropy(logits: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return float(np.mean(-(p * np.log(p)).sum(axis=1)))


def _np_tv(img: np.ndarray) -> float:
    b, _, h, w = img.shape
    return float((np.abs(np.diff(img, axis=2)).sum() + np.abs(np.diff(img, axis=3)).sum()) / (b * h * w))


@pytest.mark.parametrize('form, alpha', [('entropy', 0.5), ('entropy', 0.2), ('tv', 0.1), ('tv', 0.7)])
def test_maxent_matches_numpy_on_photos(photo_pairs, form, alpha):
    clean, degraded = photo_pairs
    pred = np.stack(degraded).transpose(0, 3, 1, 2) * 4.0  # scaled so the channel softmax is far from uniform
    target = np.stack(clean).transpose(0, 3, 1, 2)
    reg = _np_entropy(pred) if form == 'entropy' else _np_tv(pred)
    expected = (1 - alpha) * np.mean((pred - target) ** 2) + alpha * reg
    got = MaxEntLoss(alpha=alpha, form=form, loss_weight=3.0)(torch.from_numpy(pred), torch.from_numpy(target))
    assert got.item() == pytest.approx(3.0 * expected, rel=1e-10)
    per_image = MaxEntLoss(alpha=alpha, form=form, reduction='none')(torch.from_numpy(pred),
                                                                      torch.from_numpy(target))
    assert per_image.shape == (3,)
    regs = [_np_entropy(p[None]) if form == 'entropy' else _np_tv(p[None]) for p in pred]
    expected_each = [(1 - alpha) * np.mean((p - t) ** 2) + alpha * r for p, t, r in zip(pred, target, regs)]
    np.testing.assert_allclose(per_image.numpy(), expected_each, rtol=1e-10)
    assert MaxEntLoss(alpha=alpha, form=form, reduction='sum')(torch.from_numpy(pred), torch.from_numpy(target)) \
        .item() == pytest.approx(sum(expected_each), rel=1e-10)


def test_maxent_published_defaults():
    assert MaxEntLoss(form='entropy').alpha == 0.5
    assert MaxEntLoss(form='tv').alpha == 0.1


@pytest.mark.parametrize('channels', [2, 3, 5])
def test_entropy_of_uniform_softmax_is_log_c(channels):
    # Equal logits in every channel (any value per pixel) give a uniform softmax: H = log C everywhere.
    pred = torch.rand(2, 1, 6, 7, dtype=torch.float64).expand(2, channels, 6, 7)
    got = MaxEntLoss(alpha=0.3, form='entropy')(pred, pred)
    assert got.item() == pytest.approx(0.3 * math.log(channels), rel=1e-12)


def test_entropy_is_stable_for_large_logits():
    pred = torch.tensor([[1000.0, -1000.0, 0.0]], dtype=torch.float32).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    pred = pred.clone().requires_grad_(True)
    loss = MaxEntLoss(alpha=1.0, form='entropy')(pred, pred.detach())
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # one channel takes all the mass
    assert torch.isfinite(pred.grad).all()


def test_tv_analytic_cases():
    const = torch.full((2, 3, 5, 6), 0.4, dtype=torch.float64)
    target = torch.zeros_like(const)
    # Constant image: TV = 0, only the MSE term remains.
    assert MaxEntLoss(alpha=0.25, form='tv')(const, target).item() == pytest.approx(0.75 * 0.16, rel=1e-12)
    # One vertical step edge of height 1 in every channel: each of the H rows has one unit jump per channel.
    b, c, h, w = 2, 3, 4, 6
    edge = torch.zeros(b, c, h, w, dtype=torch.float64)
    edge[..., w // 2:] = 1.0
    tv = (b * c * h * 1.0) / (b * h * w)  # = c / w = 0.5: channels summed, not counted in the divisor
    assert MaxEntLoss(alpha=0.4, form='tv')(edge, edge).item() == pytest.approx(0.4 * tv, rel=1e-12)
    # The same edge turned horizontal (W rows, H columns) is counted by the other difference: the same TV.
    turned = edge.transpose(-1, -2).contiguous()
    assert MaxEntLoss(alpha=0.4, form='tv')(turned, turned).item() == pytest.approx(0.4 * tv, rel=1e-12)
    # A half-height step (0 -> 0.5) halves it.
    assert MaxEntLoss(alpha=0.4, form='tv')(edge / 2, edge / 2).item() == pytest.approx(0.2 * tv, rel=1e-12)


@pytest.mark.parametrize('form', ['entropy', 'tv'])
def test_maxent_clip_is_per_frame(form):
    gen = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 4, 3, 8, 9, generator=gen, dtype=torch.float64)
    target = torch.rand(2, 4, 3, 8, 9, generator=gen, dtype=torch.float64)
    per_frame = MaxEntLoss(alpha=0.3, form=form, reduction='none')(pred, target)
    assert per_frame.shape == (2, 4)
    folded = MaxEntLoss(alpha=0.3, form=form)(pred.flatten(0, 1), target.flatten(0, 1))
    assert MaxEntLoss(alpha=0.3, form=form)(pred, target).item() == pytest.approx(folded.item(), rel=1e-12)
    frame = pred[1, 2].numpy()[None]
    reg = _np_entropy(frame) if form == 'entropy' else _np_tv(frame)
    expected = 0.7 * np.mean((frame - target[1, 2].numpy()) ** 2) + 0.3 * reg
    assert per_frame[1, 2].item() == pytest.approx(expected, rel=1e-10)


# (e) bad options
@pytest.mark.parametrize('make, option', [
    (lambda: SSIMLoss(reduction='avg'), 'reduction'),
    (lambda: SSIMLoss(alpha=1.5), 'alpha'),
    (lambda: SSIMLoss(window_size=10), 'window_size'),
    (lambda: SSIMLoss(sigma=0.0), 'sigma'),
    (lambda: SSIMLoss(data_range=0), 'data_range'),
    (lambda: MaxEntLoss(form='kl'), 'form'),
    (lambda: MaxEntLoss(alpha=-0.1), 'alpha'),
    (lambda: MaxEntLoss(form='tv', alpha=1.01), 'alpha'),
    (lambda: MaxEntLoss(reduction='mean_per_pixel'), 'reduction'),
])
def test_bad_options_raise(make, option):
    with pytest.raises(ValueError, match=option):
        make()


def test_bad_inputs_raise():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match='window_size'):
        SSIMLoss()(x, x)
    with pytest.raises(ValueError, match='shape'):
        SSIMLoss()(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 15))
    with pytest.raises(ValueError, match='weight'):
        MaxEntLoss()(x, x, torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match='pred'):
        MaxEntLoss()(torch.rand(3, 8, 8), torch.rand(3, 8, 8))
