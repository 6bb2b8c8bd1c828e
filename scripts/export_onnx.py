#!/usr/bin/env python
"""Export a single-frame SR checkpoint to ONNX, verified in ONNX Runtime on a real image before it is written.

Usage: python scripts/export_onnx.py CKPT OUT.onnx [--arch NAME | --opt YML] [--opset N] [--fp16] [--overwrite]

CKPT is anything the generic loader reads (vsrkit's archs, basicsr's, spandrel's). The model gets dynamic batch,
height and width; ONNX Runtime must reproduce torch within 1e-4 (fp32) or 2e-2 (``--fp16``: weights and
activations in half precision) on a photo at a size other than the traced one, or nothing is written
(:mod:`vsrkit.inference.onnx_backend`). The file carries how the network is fed, so
``vsrkit-upscale IN OUT --model OUT.onnx`` runs it with the same colour handling, tiling and streaming. Sliding-window
and recurrent networks are refused with the reason. OUT is written atomically and never replaced without
--overwrite.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vsrkit.archs.loader import load_model
from vsrkit.inference.onnx_backend import DEFAULT_OPSET, FP16_BOUND, FP32_BOUND, ExportError, export_onnx, write_onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('checkpoint', help='checkpoint (.pth/.pt/.ckpt/.safetensors)')
    parser.add_argument('output', help='ONNX file to write')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--arch', help='registered architecture name (default: recognised from CKPT)')
    source.add_argument('--opt', help='options YAML whose network_g builds the network')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})')
    parser.add_argument('--fp16', action='store_true', help='half-precision weights and activations')
    parser.add_argument('--overwrite', action='store_true', help='replace OUT if it exists')
    args = parser.parse_args(argv)
    output = Path(args.output)
    try:
        if output.exists() and not args.overwrite:
            raise ValueError(f'{output} exists; give --overwrite to replace it')
        if output.suffix.lower() != '.onnx':
            raise ValueError(f'{output}: expected a .onnx file name')
        net, info = load_model(args.checkpoint, args.arch, args.opt, 'cpu')
        blob = export_onnx(net, info['io'], info['arch'], args.opset, args.fp16)
        write_onnx(blob, output)
    except (ExportError, FileNotFoundError, KeyError, ValueError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f'error: {message}', file=sys.stderr)
        return 1
    bound = FP16_BOUND if args.fp16 else FP32_BOUND
    print(f"{info['arch']} ({info['io'].describe()}) -> {output}: ONNX Runtime agrees with torch within {bound:g}",
          file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
