"""ViTSR memory and time: training with vs without checkpointing, inference with global vs windowed attention.

    python benchmarks/vit_memory.py            # the issue's sizes: 64x64 LR patches x 16, a 480x270 LR frame
    python benchmarks/vit_memory.py --quick    # quarter sizes, for a fast look

Each case runs in its own subprocess so that its peak resident memory (CPU) or peak allocated memory (CUDA) is
its own. Prints one table with ratios against the baseline of each group (checkpointing off; global attention).
On CUDA it adds bf16 autocast rows.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = {
    # attn_dropout 0: with attention-weight dropout torch's CPU SDPA stores the N x N weights (4 GB per layer here)
    'train': [('train, no checkpointing', {'use_checkpoint': False, 'attn_dropout': 0.0}),
              ('train, checkpointing', {'use_checkpoint': True, 'attn_dropout': 0.0})],
    'infer': [('infer, global attention', {'window_size': None}), ('infer, windowed 16', {'window_size': 16}),
              ('infer, windowed 16 + tiles 128', {'window_size': 16, 'tile': 128})],
}


def run_case(group: str, options: dict, quick: bool, device: str, bf16: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from vsrkit.archs.vit_arch import ViTSR
    from vsrkit.utils.tiling import tiled_forward

    torch.manual_seed(0)
    tile = options.pop('tile', None)
    net = ViTSR(**options).to(device)
    autocast = torch.autocast(device.split(':')[0], dtype=torch.bfloat16, enabled=bf16)
    sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if group == 'train':
        size, batch = (32, 16) if quick else (64, 16)
        x = torch.rand(batch, 3, size, size, device=device)
        y = torch.rand(batch, 3, 2 * size, 2 * size, device=device)
        optimizer = torch.optim.AdamW(net.parameters(), 1e-4)
        times = []
        for _ in range(2):  # the first step warms up allocators and kernels
            start = time.perf_counter()
            with autocast:
                loss = F.l1_loss(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sync()
            times.append(time.perf_counter() - start)
        seconds = times[-1]
    else:
        h, w = (135, 240) if quick else (270, 480)
        x = torch.rand(1, 3, h, w, device=device)
        net.eval()
        start = time.perf_counter()
        with torch.no_grad(), autocast:
            out = tiled_forward(net, x, 2, tile, overlap=16)
        sync()
        seconds = time.perf_counter() - start
        assert out.shape[-2:] == (2 * h, 2 * w)
    if device.startswith('cuda'):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return {'seconds': seconds, 'peak_mib': peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--case', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        spec = json.loads(args.case)
        print(json.dumps(run_case(spec['group'], spec['options'], args.quick, spec['device'], spec['bf16'])))
        return

    import torch

    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    precisions = [False, True] if device == 'cuda' else [False]
    sizes = ('32x32 LR x16' if args.quick else '64x64 LR x16', '240x135 LR' if args.quick else '480x270 LR')
    print(f'ViTSR (embed 128, 4 heads, 4 layers) on {device}, torch threads {torch.get_num_threads()}; '
          f'train: {sizes[0]} (attn_dropout 0), infer: {sizes[1]} frame')
    rows = []
    for group, cases in CASES.items():
        for bf16 in precisions:
            baseline = None
            for label, options in cases:
                spec = json.dumps({'group': group, 'options': options, 'device': device, 'bf16': bf16})
                cmd = [sys.executable, __file__, '--case', spec] + (['--quick'] if args.quick else [])
                result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                baseline = baseline or result
                rows.append((label + (', bf16' if bf16 else ''), result, baseline))
                print(f'  done: {rows[-1][0]}', file=sys.stderr, flush=True)
    header = f"{'case':<40} {'seconds':>9} {'x time':>7} {'peak MiB':>9} {'x memory':>9}"
    print(header)
    print('-' * len(header))
    for label, result, baseline in rows:
        print(f"{label:<40} {result['seconds']:>9.2f} {result['seconds'] / baseline['seconds']:>7.2f} "
              f"{result['peak_mib']:>9.0f} {result['peak_mib'] / max(baseline['peak_mib'], 1e-9):>9.2f}")


if __name__ == '__main__':
    main()
