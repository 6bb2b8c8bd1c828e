#!/usr/bin/env python
"""CPU frames per second of the tiny SR networks, against the convolution throughput this machine reaches.

Usage: python benchmarks/tiny_models.py [--threads N] [--min-seconds S]

On a CPU with AMX each model also gets a bf16 autocast row, with its speed against the fp32 row (what
``vsrkit-upscale --dtype auto`` weighs: ``ModelIO.amx_dtype``).

Rows: ELSR x4 on a 180x320 LR frame (output 720x1280) and VDSR on a 360x640 frame (the bicubic-upscaled input of
x2 from 180x320: VDSR runs at output resolution, so its cost does not depend on the scale; the bicubic upscaling
itself is not timed). The floor row is one large convolution (64→64 channels, 3x3, on 1x64x256x256) measured in
the same run: its GFLOP/s is what this machine's conv kernels reach when they are compute-bound. Each model's
FLOPs per frame are counted from its convolutions' shapes during one forward (2 x multiply-accumulates; PReLU,
ReLU, PixelShuffle and additions are not counted), and "of floor" is the model's achieved GFLOP/s over the floor's.
Tiny layers (ELSR's 6 channels) keep the arithmetic units idle: they are bound by memory traffic and per-layer
overhead, so their fraction is far below the floor even when their frame rate is high. Every row reports its
fastest call, so a busy machine shows up as noise in the fractions, not as a bias of one row.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from vsrkit.archs.elsr_arch import ELSR
from vsrkit.archs.vdsr_arch import VDSR
from vsrkit.evaluation.tables import format_table
from vsrkit.utils.precision import BF16_MATRIX_FLAG, autocast_for, cpu_flags, parse_dtype


def conv_flops(net: nn.Module, x: torch.Tensor) -> int:
    """FLOPs (2 x MACs) of every Conv2d in one forward of ``net`` on ``x``, from the layers' shapes."""
    total = 0

    def count(module: nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return total


@torch.no_grad()
def seconds_per_call(fn: Callable[[], object], min_seconds: float, min_calls: int = 3) -> float:
    """Fastest of the timed calls (after one warm-up), timing until ``min_seconds`` and ``min_calls`` are reached.
    The minimum, not the mean: on a shared machine other processes only ever add time."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(), help='torch intra-op threads')
    parser.add_argument('--min-seconds', type=float, default=3.0, help='timing time per row')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    floor_conv = nn.Conv2d(64, 64, 3, padding=1, bias=False).eval()
    floor_x = torch.rand(1, 64, 256, 256)
    floor_flops = conv_flops(floor_conv, floor_x)
    floor_s = seconds_per_call(lambda: floor_conv(floor_x), args.min_seconds)
    floor_gflops = floor_flops / floor_s / 1e9

    rows = [{'model': 'floor: conv 64->64 3x3, 256x256', 'input': '1x64x256x256', 'GFLOP/frame': floor_flops / 1e9,
             'ms/frame': floor_s * 1e3, 'frames/s': 1 / floor_s, 'GFLOP/s': floor_gflops, 'of floor': 1.0}]
    # bf16 autocast rows only where the CPU has AMX (what vsrkit-upscale --dtype auto asks; without it, far slower)
    amx = BF16_MATRIX_FLAG in cpu_flags()
    for name, net, shape in [('ELSR x4', ELSR(scale=4).eval(), (1, 3, 180, 320)),
                             ('VDSR (x2 of 180x320)', VDSR().eval(), (1, 1, 360, 640))]:
        x = torch.rand(*shape)
        flops = conv_flops(net, x)
        fp32_seconds = None
        for dtype in ('fp32', 'bf16') if amx else ('fp32',):
            with autocast_for('cpu', parse_dtype(dtype, 'cpu')):
                seconds = seconds_per_call(lambda: net(x), args.min_seconds)
            if dtype == 'fp32':
                fp32_seconds = seconds
            gflops = flops / seconds / 1e9
            rows.append({'model': name, 'dtype': dtype, 'input': 'x'.join(map(str, shape)), 'GFLOP/frame': flops / 1e9,
                         'ms/frame': seconds * 1e3, 'frames/s': 1 / seconds, 'x fp32': fp32_seconds / seconds,
                         'GFLOP/s': gflops, 'of floor': gflops / floor_gflops})
    print(f'CPU, {args.threads} thread(s), torch {torch.__version__}; bf16 autocast rows: '
          f'{"yes" if amx else "no (no " + BF16_MATRIX_FLAG + ")"} (x fp32: the fp32 row\'s time / this row\'s)')
    print(format_table(rows, ['model', 'dtype', 'input', 'GFLOP/frame', 'ms/frame', 'frames/s', 'x fp32', 'GFLOP/s',
                              'of floor']))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
