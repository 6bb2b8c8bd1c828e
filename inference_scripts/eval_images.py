#!/usr/bin/env python
"""Set5-style evaluation of a single-image SR checkpoint on a folder of ground-truth images.

Usage:
    python inference_scripts/eval_images.py --model CKPT --input GT_DIR --scale S [--opt YML | --arch NAME]
                                            [--y-only | --rgb] [--device cpu|cuda]

Each GT image (cropped to a multiple of S) is downscaled with MATLAB-compatible bicubic, super-resolved by the
model and scored with PSNR and SSIM on the Y channel, S border pixels shaved (``--rgb``: on RGB instead);
bicubic upscaling is scored beside it. Prints a per-image table and the average. The network is loaded by
vsrkit.archs.loader: the architecture comes from --opt (its ``network_g``) or --arch when given, else the
checkpoint's ``network_g`` entry (vsrkit training checkpoints), else its keys and shapes (every architecture
with a spec); a registered architecture without a spec, named by --arch / --opt, is fed as a single-frame
network. How it is fed is the spec's ModelIO: RGB, grey (Y in, Y out) or, for VDSR-style networks, the Y of the
bicubic upscale in and the output recombined with the bicubic Cb/Cr; a network that upscales must do so x--scale.
The protocol is :mod:`vsrkit.evaluation.image_protocol`.
"""
from __future__ import annotations

import argparse
import sys

import torch

from vsrkit.archs.loader import load_model
from vsrkit.evaluation.image_protocol import check_image_network, evaluate_images
from vsrkit.evaluation.tables import format_table
from vsrkit.utils.cpu_allocator import retain_freed_memory


def main(argv: list[str] | None = None) -> int:
    retain_freed_memory()
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
        net, info = load_model(args.model, args.arch, args.opt, args.device)
        check_image_network(info['io'], args.scale, f"{args.model} ({info['arch']})")
        rows = evaluate_images(net, info['io'], args.input, args.scale, y_only=not args.rgb)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    columns = ['name', 'bicubic_psnr', 'psnr', 'bicubic_ssim', 'ssim']
    average = {'name': 'average', **{c: sum(r[c] for r in rows) / len(rows) for c in columns[1:]}}
    channel = 'RGB' if args.rgb else 'Y'
    print(f"{info['arch']} ({info['io'].color} input) x{args.scale} on {args.input}: {channel} PSNR (dB) / SSIM, "
          f'{args.scale} px shaved')
    print(format_table(rows + [average], columns))
    return 0


if __name__ == '__main__':
    sys.exit(main())
