#!/usr/bin/env python
"""Set5-style evaluation of a single-image SR checkpoint on a folder of ground-truth images.

Usage:
    python inference_scripts/eval_images.py --model CKPT --input GT_DIR --scale S [--opt YML | --arch NAME]
                                            [--y-only | --rgb] [--device cpu|cuda]

Each GT image (cropped to a multiple of S) is downscaled with MATLAB-compatible bicubic, super-resolved by the
model and scored with PSNR and SSIM on the Y channel, S border pixels shaved (``--rgb``: on RGB instead);
bicubic upscaling is scored beside it. Prints a per-image table and the average. The architecture comes from --opt
(its ``network_g``) or --arch when given, else the checkpoint's ``network_g`` entry (vsrkit training
checkpoints, converted/legacy VDSR files), else its keys and shapes (vsrkit.archs.loader); a network that
carries a scale must be the --scale one. VDSR-style networks (Y in,
same size out) get the bicubic-upscaled Y and their output is recombined with the bicubic Cb/Cr. The protocol is
:mod:`vsrkit.evaluation.image_protocol`.
"""
from __future__ import annotations

import argparse
import sys

import torch

from vsrkit.evaluation.image_protocol import evaluate_images, input_mode, load_network
from vsrkit.evaluation.tables import format_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', required=True, help='checkpoint (.pth)')
    parser.add_argument('--input', required=True, help='folder of ground-truth images')
    parser.add_argument('--scale', type=int, required=True, help='downscaling / upscaling factor')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--opt', help="options YAML whose network_g builds the model (if the checkpoint has none)")
    source.add_argument('--arch', help="registered architecture name (if the checkpoint has no network_g)")
    channels = parser.add_mutually_exclusive_group()
    channels.add_argument('--y-only', dest='rgb', action='store_false', help='score the Y channel (the default)')
    channels.add_argument('--rgb', dest='rgb', action='store_true', help='score RGB instead of the Y channel')
    parser.set_defaults(rgb=False)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args(argv)
    try:
        net, options = load_network(args.model, args.opt, args.arch, args.device)
        if options.get('scale', args.scale) != args.scale:
            raise ValueError(f"{args.model} holds a x{options['scale']} {options['type']}, not x{args.scale} (--scale)")
        mode = input_mode(net, args.scale)
        rows = evaluate_images(net, args.input, args.scale, y_only=not args.rgb)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    columns = ['name', 'bicubic_psnr', 'psnr', 'bicubic_ssim', 'ssim']
    average = {'name': 'average', **{c: sum(r[c] for r in rows) / len(rows) for c in columns[1:]}}
    channel = 'RGB' if args.rgb else 'Y'
    print(f"{options['type']} ({mode} input) x{args.scale} on {args.input}: {channel} PSNR (dB) / SSIM, "
          f'{args.scale} px shaved')
    print(format_table(rows + [average], columns))
    return 0


if __name__ == '__main__':
    sys.exit(main())
