#!/usr/bin/env python
"""Convert a checkpoint vsrkit recognises into a vsrkit checkpoint {'params', 'network_g'}.

Usage: python scripts/convert_checkpoint.py SRC DST [--arch NAME | --opt YML] [--overwrite]

SRC may be anything the generic loader (vsrkit.archs.loader) reads: a published whole-module VDSR pickle (read by
the restricted unpickler, nothing in it is executed: vsrkit.utils.legacy_checkpoint), a plain state dict or a
training checkpoint of any architecture with a spec, or of another registered one named by --arch / --opt. The
architecture's remap renames an original's tensors to vsrkit's names; the result must load strictly before
anything is written. DST is written atomically and never replaced without --overwrite.
"""
from __future__ import annotations

import argparse
import sys

from vsrkit.archs.loader import standard_checkpoint
from vsrkit.utils.legacy_checkpoint import save_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='checkpoint to convert')
    parser.add_argument('dst', help='output checkpoint path')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--arch', help='registered architecture name (default: recognised from SRC)')
    source.add_argument('--opt', help="options YAML whose network_g builds the network")
    parser.add_argument('--overwrite', action='store_true', help='replace DST if it exists')
    args = parser.parse_args(argv)
    try:
        checkpoint = standard_checkpoint(args.src, args.arch, args.opt)
        save_checkpoint(checkpoint, args.dst, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f"wrote {args.dst}: {checkpoint['network_g']}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
