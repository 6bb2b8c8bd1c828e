"""Clips per second: vsrkit's REDSClipDataset vs basicsr's REDSRecurrentDataset, same data, same options.

    python benchmarks/loader_throughput.py [--work DIR] [--clips 96] [--frame-size 360 640] [--num-frame 16]

The data are REDS-shaped and usable by both: BasicSR's REDS datasets assume 100 frames per clip, so each of
four clips (001-004, outside REDS4) is 100 frames played back and forth from one clip of the sample video set
(vsrkit.data.sample_videos), resized to --frame-size (GT) with LR = cv2 bicubic x1/4 (throughput, not quality,
is measured). Written once under --work: GT/LR lmdbs (vsrkit's writer, BasicSR format), the same frames as PNG
folders and a BasicSR meta_info file ``001 100 (h,w,3)``. Options follow MIA-VSR's REDS recipe: 16-frame clips,
gt_size 256, flips and rotations, interval 1.

Every configuration runs in its own process (py-lmdb >= 2 allows one open of an environment per process, and a
fresh process keeps page-cache and import effects comparable); the first batch is a warm-up and not timed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2

DATASETS = {'vsrkit': 'REDSClipDataset', 'basicsr': 'REDSRecurrentDataset'}
SOURCE_CLIPS = {'001': '001', '002': '003', '003': '005', '004': '006'}  # benchmark clip -> sample clip
FRAMES = 100


def _playback(length: int, count: int) -> list[int]:
    """0, 1, ..., length-1, length-2, ..., 1, 0, 1, ... (no jumps, so neighbouring frames stay similar)."""
    period = 2 * (length - 1)
    return [i % period if i % period < length else period - i % period for i in range(count)]


def prepare(work: Path, frame_size: tuple[int, int]) -> dict[str, Path]:
    from vsrkit.data.lmdb_io import write_lmdb
    from vsrkit.data.sample_videos import build_video_sample

    h, w = frame_size
    data = work / f'reds_{h}x{w}'
    paths = {'gt_lmdb': data / 'gt.lmdb', 'lq_lmdb': data / 'lq_x4.lmdb', 'gt_disk': data / 'gt',
             'lq_disk': data / 'lq_x4', 'meta': data / 'meta_info_bench.txt'}
    if paths['meta'].is_file():
        return paths
    build_video_sample(work / 'video_sample')
    sample_gt = work / 'video_sample' / 'REDS' / 'train_sharp'
    gt_items, lq_items = [], []
    for clip, source in SOURCE_CLIPS.items():
        frames = sorted((sample_gt / source).glob('*.png'))
        for index, frame in enumerate(_playback(len(frames), FRAMES)):
            gt = cv2.resize(cv2.imread(str(frames[frame])), (w, h), interpolation=cv2.INTER_CUBIC)
            lq = cv2.resize(gt, (w // 4, h // 4), interpolation=cv2.INTER_CUBIC)
            key = f'{clip}/{index:08d}'
            for root, img, items in [(paths['gt_disk'], gt, gt_items), (paths['lq_disk'], lq, lq_items)]:
                (root / clip).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / f'{key}.png'), img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
                items.append((key, root / f'{key}.png'))
    write_lmdb(gt_items, paths['gt_lmdb'], overwrite=True)
    write_lmdb(lq_items, paths['lq_lmdb'], overwrite=True)
    tmp = paths['meta'].with_suffix('.tmp')
    tmp.write_text(''.join(f'{clip} {FRAMES} ({h},{w},3)\n' for clip in SOURCE_CLIPS))
    os.replace(tmp, paths['meta'])
    return paths


def run_one(config: dict) -> float:
    """Clips per second of one (library, backend, workers) configuration; runs in a fresh process."""
    import random

    import torch

    from vsrkit.data import build_dataset  # vsrkit's datasets and basicsr's, by name

    torch.set_num_threads(1)
    random.seed(0)
    backend = config['backend']
    opt = {'dataroot_gt': config[f'gt_{backend}'], 'dataroot_lq': config[f'lq_{backend}'],
           'meta_info_file': config['meta'], 'val_partition': 'REDS4', 'test_mode': False,
           'io_backend': {'type': backend}, 'num_frame': config['num_frame'], 'gt_size': config['gt_size'],
           'interval_list': [1], 'random_reverse': False, 'use_hflip': True, 'use_rot': True, 'scale': 4}
    dataset = build_dataset({'type': DATASETS[config['library']], **opt})
    workers = config['workers']
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers,
                                         sampler=torch.utils.data.RandomSampler(
                                             dataset, replacement=True, num_samples=config['clips'] + 1,
                                             generator=torch.Generator().manual_seed(0)),
                                         multiprocessing_context='fork' if workers else None)
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start, lmdb open
    start = time.perf_counter()
    count = sum(1 for _ in iterator)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work', type=Path, default=Path('/tmp/vsrkit_loader_bench'))
    parser.add_argument('--clips', type=int, default=96, help='clips timed per configuration')
    parser.add_argument('--frame-size', type=int, nargs=2, default=(360, 640), metavar=('H', 'W'))
    parser.add_argument('--num-frame', type=int, default=16)
    parser.add_argument('--gt-size', type=int, default=256)
    parser.add_argument('--run-one', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(json.loads(args.run_one))))
        return

    paths = {k: str(v) for k, v in prepare(args.work, tuple(args.frame_size)).items()}
    rows = []
    for backend in ['lmdb', 'disk']:
        for workers in [0, 2]:
            rates = {}
            for library in DATASETS:
                config = {**paths, 'backend': backend, 'workers': workers, 'library': library, 'clips': args.clips,
                          'num_frame': args.num_frame, 'gt_size': args.gt_size}
                out = subprocess.run([sys.executable, __file__, '--run-one', json.dumps(config)], check=True,
                                     capture_output=True, text=True).stdout
                rates[library] = float(out.strip().splitlines()[-1])
            rows.append((backend, workers, rates['vsrkit'], rates['basicsr']))
    h, w = args.frame_size
    print(f'REDS-shaped clips: {args.num_frame} frames, GT {h}x{w} -> crop {args.gt_size}, x4, {args.clips} clips '
          f'per configuration, {os.cpu_count()} CPU cores')
    print(f'{"backend":8} {"workers":>7} {"vsrkit clips/s":>15} {"basicsr clips/s":>16} {"ratio":>6}')
    for backend, workers, ours, theirs in rows:
        print(f'{backend:8} {workers:7d} {ours:15.2f} {theirs:16.2f} {ours / theirs:5.2f}x')


if __name__ == '__main__':
    main()
