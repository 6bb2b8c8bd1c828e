"""One rule for the arithmetic precision of training, evaluation and inference.

Names: ``fp32`` (no autocast), ``bf16`` / ``bfloat16``, ``fp16`` / ``float16``. fp16 autocast needs CUDA (on CPU
it is either unsupported or far slower than fp32); bf16 runs on both. :func:`parse_dtype` turns a name into the
autocast dtype (None for fp32) and refuses fp16 off CUDA with one line naming the option at fault;
:func:`autocast_for` is the matching context.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager

import torch

DTYPES: dict[str, torch.dtype | None] = {'fp32': None, 'float32': None, 'bf16': torch.bfloat16,
                                         'bfloat16': torch.bfloat16, 'fp16': torch.float16, 'float16': torch.float16}
DTYPE_CHOICES = ('fp32', 'bf16', 'fp16')  # the names offered on command lines


def parse_dtype(name: str | None, device: torch.device | str, where: str = '--dtype') -> torch.dtype | None:
    """Autocast dtype for ``name`` on ``device`` (None: fp32). ``where`` names the option in error messages."""
    device = torch.device(device)
    if name in (None, False, 'none', 'no'):
        return None
    if name not in DTYPES:
        raise ValueError(f'{where}: expected one of {", ".join(DTYPE_CHOICES)} (or none), got {name!r}')
    dtype = DTYPES[name]
    if dtype is torch.float16 and device.type != 'cuda':
        raise ValueError(f'{where}: fp16 needs CUDA; use bf16 or fp32 on {device.type}')
    return dtype


def autocast_for(device: torch.device | str, dtype: torch.dtype | None) -> ContextManager:
    """Autocast context for ``dtype`` on ``device`` (None or float32: plain fp32, no autocast)."""
    device = torch.device(device)
    if dtype is None or dtype is torch.float32:
        return nullcontext()
    if dtype is torch.float16 and device.type != 'cuda':
        raise ValueError(f'fp16 autocast needs CUDA; use bf16 or fp32 on {device.type}')
    return torch.autocast(device.type, dtype=dtype)
