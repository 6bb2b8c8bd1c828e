#!/usr/bin/env python
"""Spatio-temporal fusion: grey (or colour, made grey) frames or a video → twice the frame rate, in colour.

Usage:
    python inference_scripts/spatiotemporal.py INPUT OUTPUT --colorizer CKPT --interpolator CKPT
        [--reference REF] [--alpha A] [--device cpu|cuda] [--overwrite]

N input frames give 2N output frames x0, p0, x1, p1, …, x_{N-1}, p_{N-1}: each known frame followed by the frame
the interpolator predicts after it (the last one extrapolates past the input's end, as the original does). Every
frame is then colourised. OUTPUT is a folder of PNGs 00000000.png … written under a temporary name and renamed
when complete. With --reference (a folder or video of the real frames at the doubled rate, e.g. the clip the
input's even frames were taken from) PSNR/SSIM (RGB) are printed for the known, the interpolated and all frames;
output frames beyond the reference's length are not scored. --alpha overrides the interpolator's blend weight
(the original trains with 0.5 and infers with 0.6). Checkpoints are vsrkit training checkpoints (their
'network_g' entry builds the network).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from vsrkit.archs.loader import load_model
from vsrkit.inference.spatiotemporal import fuse, read_frames, score_frames, to_grey_tensor, to_images, write_frames
from vsrkit.utils.cpu_allocator import retain_freed_memory


def main(argv: list[str] | None = None) -> int:
    retain_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('input', help='folder of frames or a video file')
    parser.add_argument('output', help='output folder of PNG frames')
    parser.add_argument('--colorizer', required=True, help='Grey2RGBAutoEncoder checkpoint')
    parser.add_argument('--interpolator', required=True, help='ConvLSTM checkpoint')
    parser.add_argument('--reference', help='folder or video of the real frames at the doubled frame rate')
    parser.add_argument('--alpha', type=float, help="interpolator blend weight (default: the checkpoint's)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--overwrite', action='store_true', help='replace OUTPUT if it exists')
    args = parser.parse_args(argv)
    try:
        if Path(args.output).exists() and not args.overwrite:  # refused before any work, not after it
            raise FileExistsError(f'{args.output} exists; pass --overwrite to replace it')
        colorizer, _ = load_model(args.colorizer, device=args.device)
        interpolator, _ = load_model(args.interpolator, device=args.device)
        if args.alpha is not None:
            interpolator.alpha = args.alpha
        grey = to_grey_tensor(read_frames(args.input))
        images = to_images(fuse(grey, colorizer, interpolator))
        write_frames(images, args.output, overwrite=args.overwrite)
        print(f'{len(grey)} frames in -> {len(images)} frames out: {args.output}')
        if args.reference:
            rows = score_frames(images, read_frames(args.reference))
            for label, subset in (('known', rows[0::2]), ('interpolated', rows[1::2]), ('all', rows)):
                if subset:
                    print(f"{label:>12}: PSNR {np.mean([r['psnr'] for r in subset]):.4f} dB, "
                          f"SSIM {np.mean([r['ssim'] for r in subset]):.4f} ({len(subset)} frames)")
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
