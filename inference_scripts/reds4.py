#!/usr/bin/env python
"""Evaluate a recurrent video SR checkpoint (MIA-VSR, ...) on REDS4 as MIA-VSR's official test does.

Usage:
    python inference_scripts/reds4.py [--model CKPT] [--opt YML] [--gt GT --lq LQ --meta-info TXT]
                                      [--crop-border 0] [--chunk N --chunk-overlap K] [--device cpu|cuda]
                                      [--dtype fp32|fp16|bf16] [--out-dir DIR] [--save-images] [--no-bicubic]
                                      [--overwrite]

Clips 000, 011, 015 and 020, all frames, x4 (MATLAB-bicubic LR). Every frame is scored with PSNR and SSIM on RGB
and on Y (``--crop-border`` pixels shaved; the official script uses 0); a clip's numbers are the mean over its
frames, the average the mean over clips. Bicubic upscaling of the same LR frames is scored beside. Prints the
table, writes ``results.csv`` and ``results.json`` (atomically) to ``--out-dir`` and, with ``--save-images``,
the SR frames as ``images/<clip>/<frame>.png``; earlier results there are refused (before evaluating)
unless ``--overwrite``. ``--chunk``: long clips run in overlapping temporal chunks
(blended), so memory stays bounded.

Defaults: checkpoint ``experiments/miavsr_reds/models/net_g_latest.pth`` (when absent and no --model is given:
a message, and bicubic is scored alone); the network from ``--opt``'s network_g if given, else the checkpoint's
``network_g`` entry, else recognised from its keys and shapes (``vsrkit.archs.loader``); weights
``params_ema`` if present, else ``params``; data: BasicSR's REDS lmdbs ``datasets/REDS/train_sharp_with_val.lmdb``
/ ``train_sharp_bicubic_with_val.lmdb`` with ``data/meta_info/meta_info_REDS4_test_GT.txt``; where they are
absent, the bundled sample clips 000/011/015 (``datasets/sample/video``, built on first use) are evaluated
instead, saying so — those are not REDS4 numbers.
The protocol is :mod:`vsrkit.evaluation.video_protocol`.
"""
from __future__ import annotations

import sys

from vsrkit.evaluation.video_protocol import Benchmark, benchmark_main

REDS4 = Benchmark(
    name='REDS4', options='options/miavsr_reds.yml', checkpoint='experiments/miavsr_reds/models/net_g_latest.pth',
    dataset={'name': 'REDS4', 'dataroot_gt': 'datasets/REDS/train_sharp_with_val.lmdb',
             'dataroot_lq': 'datasets/REDS/train_sharp_bicubic_with_val.lmdb',
             'meta_info_file': 'data/meta_info/meta_info_REDS4_test_GT.txt', 'io_backend': {'type': 'lmdb'}},
    sample_dataset={'name': 'sample_REDS4', 'dataroot_gt': 'datasets/sample/video/REDS/train_sharp',
                    'dataroot_lq': 'datasets/sample/video/REDS/train_sharp_bicubic/X4',
                    'meta_info_file': 'datasets/sample/video/REDS/meta_info_REDS4_test_GT.txt',
                    'io_backend': {'type': 'disk'}})


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(REDS4, argv, __doc__.splitlines()[0])


if __name__ == '__main__':
    sys.exit(main())
