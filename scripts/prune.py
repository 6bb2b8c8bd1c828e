#!/usr/bin/env python
"""L1-norm filter pruning of a VDSR checkpoint, physically shrinking every layer.

Usage: python scripts/prune.py --model CKPT --sparsity 0.5 --output DST [--overwrite]

CKPT may be a published whole-module pickle (loaded safely) or a vsrkit checkpoint, read by the generic loader
(vsrkit.archs.loader). DST holds the shrunk 'params' and 'network_g' with the per-layer 'widths', so
VDSR(**network_g minus 'type') rebuilds it.
"""
from __future__ import annotations

import argparse
import sys

from vsrkit.archs.loader import standard_checkpoint
from vsrkit.archs.pruning import prune_conv_chain
from vsrkit.archs.vdsr_arch import vdsr_network_options
from vsrkit.utils.legacy_checkpoint import save_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', required=True, help='VDSR checkpoint to prune')
    parser.add_argument('--sparsity', type=float, default=0.5, help='fraction of filters removed per conv')
    parser.add_argument('--output', required=True, help='pruned checkpoint path')
    parser.add_argument('--overwrite', action='store_true', help='replace --output if it exists')
    args = parser.parse_args(argv)
    try:
        checkpoint = standard_checkpoint(args.model)
        if checkpoint['network_g']['type'] != 'VDSR':
            raise ValueError(f"{args.model}: holds a {checkpoint['network_g']['type']}, only VDSR chains can be "
                             'pruned')
        params, widths = prune_conv_chain(checkpoint['params'], args.sparsity)
        save_checkpoint({'params': params, 'network_g': vdsr_network_options(widths)}, args.output,
                        overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    n_before = sum(v.numel() for v in checkpoint['params'].values())
    n_after = sum(v.numel() for v in params.values())
    print(f'wrote {args.output}: widths {widths}, {n_before:,} -> {n_after:,} parameters')
    return 0


if __name__ == '__main__':
    sys.exit(main())
