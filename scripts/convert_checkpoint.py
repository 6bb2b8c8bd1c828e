#!/usr/bin/env python
"""Convert a published VDSR whole-module pickle into a vsrkit checkpoint {'params', 'network_g'}.

Usage: python scripts/convert_checkpoint.py SRC DST [--overwrite]

Nothing in SRC is executed: see vsrkit.utils.legacy_checkpoint. DST is written atomically.
"""
from __future__ import annotations

import argparse
import sys

from vsrkit.utils.legacy_checkpoint import UnsafePickleError, load_legacy_checkpoint, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='published checkpoint (legacy or zip pickle of vdsr.Net, or a state dict)')
    parser.add_argument('dst', help='output checkpoint path')
    parser.add_argument('--overwrite', action='store_true', help='replace DST if it exists')
    args = parser.parse_args(argv)
    try:
        checkpoint = load_legacy_checkpoint(args.src)
        save_checkpoint(checkpoint, args.dst, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, UnsafePickleError, KeyError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f"wrote {args.dst}: {checkpoint['network_g']}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
