"""Real architectures with hand-set weights that compute known functions, those functions written again in NumPy,
and tile / chunk blends written independently of ``vsrkit.utils.tiling``.

Video-pipeline tests compare what a command writes with these references. Every network here depends visibly on
its input (the ConvLSTM also on the frames before it; the ELSR's zero-padded borders make a tile's edges wrong), so
a wrong frame order, chunk blend, tile blend, colour path or interpolation step changes the expected output by tens
of grey levels, not by one.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from vsrkit.archs.convlstm_arch import ConvLSTM
from vsrkit.archs.elsr_arch import ELSR
from vsrkit.archs.grey2rgb_arch import Grey2RGBAutoEncoder

# sharpening_elsr: x + SHARPEN * laplacian(x). A third: on uint8 input (and ramp blends, whose weights have odd
# denominators) no output lands on a rounding tie, so float32 and float64 round alike
SHARPEN = 1 / 3
# colouring_grey2rgb: channel c = sigmoid(w_c * grey + b_c); |w| <= 4, so one grey level in moves at most one out
COLOUR = ((4.0, -2.0), (-3.0, 2.0), (2.5, -0.5))
GATE_BIAS = 6.0  # shifting_convlstm: input and output gates nearly open, forget gate at one half
G_WEIGHT = 2.0


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1 / (1 + np.exp(-x))


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- ELSR
def sharpening_elsr(scale: int = 2) -> ELSR:
    """ELSR computing, per RGB channel, nearest-neighbour x``scale`` of ``x + SHARPEN * laplacian(x)`` (zero padding):
    a receptive field of one LR pixel, and tile edges (zero-padded) visibly wrong without blending."""
    net = ELSR(scale=scale, in_channels=3, num_feat=6)
    laplacian = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]])
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.layer2_4.prelu.weight.fill_(0.25)  # the residual block's convs are zero: it passes its input on
        for c in range(3):
            net.layer1.weight[c, c, 1, 1] = 1
            net.layer1.weight[3 + c, c] = laplacian
            block = slice(c * scale * scale, (c + 1) * scale * scale)  # PixelShuffle's sub-pixels of channel c
            net.layer5.weight[block, c, 1, 1] = 1
            net.layer5.weight[block, 3 + c, 1, 1] = SHARPEN
    return net.eval()


def sharpening_reference(image: np.ndarray, scale: int = 2) -> np.ndarray:
    """What sharpening_elsr computes: (H, W, C) float -> (H·scale, W·scale, C) float, unclamped."""
    p = np.pad(image, ((1, 1), (1, 1), (0, 0)))
    laplacian = 4 * image - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]
    return np.repeat(np.repeat(image + SHARPEN * laplacian, scale, 0), scale, 1)


# ----------------------------------------------------------------------------------------------- Grey2RGB
def colouring_grey2rgb(net: Grey2RGBAutoEncoder) -> Grey2RGBAutoEncoder:
    """Set ``net`` (any release) to colour a grey frame as channel c = sigmoid(w_c·grey + b_c) (``COLOUR``): the grey
    value passes through channel 0 of every layer (centre taps, BatchNorm as the identity), the last layer colours."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.zero_()
                module.bias.zero_()
                module.weight[0, 0, 1, 1] = 1
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.reset_parameters()
                module.running_var.fill_(1 - module.eps)  # (x - 0) / sqrt(var + eps) = x exactly
        last = [m for m in net.decoder if isinstance(m, torch.nn.ConvTranspose2d)][-1]
        last.weight[0, :, 1, 1] = torch.tensor([w for w, _ in COLOUR])
        last.bias[:] = torch.tensor([b for _, b in COLOUR])
    return net.eval()


def colouring_reference(grey: np.ndarray) -> np.ndarray:
    """What colouring_grey2rgb computes: (H, W) grey in [0, 1] -> (H, W, 3) RGB in (0, 1)."""
    return np.stack([sigmoid(w * grey + b) for w, b in COLOUR], axis=-1)


# ----------------------------------------------------------------------------------------------- ConvLSTM
def shifting_convlstm(net: ConvLSTM) -> ConvLSTM:
    """Set every cell of a grey ConvLSTM (one hidden channel per layer, layers not stacked, so the last cell's
    function is the output) to: g = G_WEIGHT · (the input pixel to the left), c' = c/2 + σ(6)·tanh(g),
    h' = σ(6)·tanh(c'). The output moves the picture one pixel right and remembers the frames before."""
    if any(d != 1 for d in net.hidden_dims) or (net.stack_layers and len(net.cells) > 1):
        raise ValueError('shifting_convlstm: one hidden channel per layer, layers not stacked')
    with torch.no_grad():
        for cell in net.cells:
            conv = cell.conv  # gates i, f, o, g (one channel each) from [input, h]
            conv.weight.zero_()
            conv.bias[:] = torch.tensor([GATE_BIAS, 0.0, GATE_BIAS, 0.0])
            conv.weight[3, 0, 1, 0] = G_WEIGHT  # cross-correlation: tap (1, 0) reads the pixel to the left
    return net.eval()


def convlstm_reference(frames: np.ndarray, alpha: float) -> np.ndarray:
    """What shifting_convlstm computes over (T, H, W) grey frames: ConvLSTM's documented recurrence (known frame
    t, then the blend (1-α)·x_t + α·x_{t+1} for t < T-2; output t = h right after reading frame t)."""
    c = np.zeros(frames.shape[1:])
    open_gate = sigmoid(GATE_BIAS)

    def step(x: np.ndarray) -> np.ndarray:
        nonlocal c
        left = np.pad(x, ((0, 0), (1, 0)))[:, :-1]
        c = sigmoid(0.0) * c + open_gate * np.tanh(G_WEIGHT * left)
        return open_gate * np.tanh(c)

    out = []
    for t in range(len(frames)):
        out.append(step(frames[t]))
        if t < len(frames) - 2:
            step((1 - alpha) * frames[t] + alpha * frames[t + 1])
    return np.stack(out)


# ----------------------------------------------------------------------------------------------- blends
def starts(length: int, size: int, overlap: int) -> list[int]:
    """Window starts: every ``size - overlap``, the last window ending at the end (one window if it fits)."""
    if length <= size:
        return [0]
    found = list(range(0, length - size, size - overlap))
    return found + [length - size]


def ramp(length: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """Weights of one window: 1 inside, rising 1/(o+1) … o/(o+1) over a shared start, falling over a shared end."""
    weight = np.ones(length)
    rise = np.linspace(0, 1, overlap + 2)[1:-1]
    if overlap and not first:
        weight[:overlap] = rise
    if overlap and not last:
        weight[-overlap:] = rise[::-1]
    return weight


def blend_chunks(fn: Callable[[np.ndarray], np.ndarray], frames: np.ndarray, chunk: int,
                 overlap: int) -> np.ndarray:
    """``fn`` (a clip of frames -> as many output frames) over overlapping chunks of ``frames``, blended."""
    positions = starts(len(frames), chunk, overlap)
    total, norm = None, np.zeros(len(frames))
    for i, start in enumerate(positions):
        out = fn(frames[start:start + chunk])
        total = np.zeros((len(frames), *out.shape[1:])) if total is None else total
        w = ramp(len(out), overlap, i == 0, i == len(positions) - 1)
        total[start:start + len(out)] += out * w.reshape(-1, *[1] * (out.ndim - 1))
        norm[start:start + len(out)] += w
    return total / norm.reshape(-1, *[1] * (total.ndim - 1))


def blend_tiles(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, scale: int, tile: int,
                overlap: int) -> np.ndarray:
    """``fn`` ((h, w, C) -> (h·scale, w·scale, C)) on overlapping ``tile`` x ``tile`` tiles of an (H, W, C) image,
    blended with ramps over ``overlap·scale`` output pixels."""
    h, w = image.shape[:2]
    ys, xs = starts(h, tile, overlap), starts(w, tile, overlap)
    total = np.zeros((h * scale, w * scale, image.shape[2]))
    norm = np.zeros((h * scale, w * scale))
    for y in ys:
        for x in xs:
            out = fn(image[y:y + tile, x:x + tile])
            th, tw = out.shape[:2]
            weight = (ramp(th, overlap * scale, y == ys[0], y == ys[-1])[:, None]
                      * ramp(tw, overlap * scale, x == xs[0], x == xs[-1])[None, :])
            total[y * scale:y * scale + th, x * scale:x * scale + tw] += out * weight[..., None]
            norm[y * scale:y * scale + th, x * scale:x * scale + tw] += weight
    return total / norm[..., None]
