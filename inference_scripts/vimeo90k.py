#!/usr/bin/env python
"""Evaluate a recurrent video SR checkpoint (MIA-VSR, ...) on Vimeo-90K-T as MIA-VSR's official test does.

Usage:
    python inference_scripts/vimeo90k.py [--model CKPT] [--opt YML] [--gt GT --lq LQ --meta-info TXT]
                                         [--crop-border 0] [--device cpu|cuda] [--dtype fp32|fp16|bf16]
                                         [--out-dir DIR] [--save-images] [--no-bicubic]
                                         [--overwrite]

Each septuplet's 7 LR frames (x4, MATLAB-bicubic) go through the network; only the centre frame (im4) is
scored — the published Vimeo-90K-T numbers are its PSNR/SSIM on Y; RGB is reported beside. A row per
septuplet, the average over septuplets, bicubic beside. Output, options and defaults as
``inference_scripts/reds4.py`` (checkpoint ``experiments/miavsr_vimeo/models/net_g_latest.pth``, the network
as there, data ``datasets/vimeo90k/vimeo90k_test_GT.lmdb`` / ``vimeo90k_test_LR7frames.lmdb``
with ``data/meta_info/meta_info_Vimeo90K_test_GT.txt``; the bundled sample septuplets where those are absent).
"""
from __future__ import annotations

import sys

from vsrkit.evaluation.video_protocol import Benchmark, benchmark_main

VIMEO90K_T = Benchmark(
    name='Vimeo90K-T', options='options/miavsr_vimeo.yml',
    checkpoint='experiments/miavsr_vimeo/models/net_g_latest.pth', center_frame_only=True,
    dataset={'name': 'Vimeo90K-T', 'dataroot_gt': 'datasets/vimeo90k/vimeo90k_test_GT.lmdb',
             'dataroot_lq': 'datasets/vimeo90k/vimeo90k_test_LR7frames.lmdb',
             'meta_info_file': 'data/meta_info/meta_info_Vimeo90K_test_GT.txt', 'io_backend': {'type': 'lmdb'}},
    sample_dataset={'name': 'sample_Vimeo90K-T', 'dataroot_gt': 'datasets/sample/video/vimeo90k/vimeo90k_test_GT.lmdb',
                    'dataroot_lq': 'datasets/sample/video/vimeo90k/vimeo90k_test_LR7frames.lmdb',
                    'meta_info_file': 'datasets/sample/video/vimeo90k/meta_info_Vimeo90K_test_GT.txt',
                    'io_backend': {'type': 'lmdb'}})


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(VIMEO90K_T, argv, __doc__.splitlines()[0])


if __name__ == '__main__':
    sys.exit(main())
