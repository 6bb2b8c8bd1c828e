"""One rule for the arithmetic precision of training, evaluation and inference.

Names: ``fp32`` (no autocast), ``bf16`` / ``bfloat16``, ``fp16`` / ``float16``. fp16 autocast needs CUDA (on CPU
it is either unsupported or far slower than fp32); bf16 runs on both. :func:`parse_dtype` turns a name into the
autocast dtype (None for fp32) and refuses fp16 off CUDA with one line naming the option at fault;
:func:`autocast_for` is the matching context. :func:`auto_dtype` is what ``--dtype auto`` picks for a device,
detected, never assumed.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
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


AUTO = 'auto'  # the name of auto_dtype's choice on command lines
BF16_MATRIX_FLAG = 'amx_bf16'  # /proc/cpuinfo: AMX tiles for bf16


def cpu_flags(cpuinfo: Path = Path('/proc/cpuinfo')) -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them; empty where it cannot be read (not Linux)."""
    try:
        with open(cpuinfo) as lines:
            flags = next((line for line in lines if line.startswith('flags')), '')
    except OSError:
        return frozenset()
    return frozenset(flags.partition(':')[2].split())


def auto_dtype(device: torch.device | str, amx_dtype: str) -> tuple[str, str]:
    """(name, why) of the precision ``--dtype auto`` runs a network in on ``device``: its ``amx_dtype`` (from its
    spec: 'bf16' where measured faster than fp32 on a CPU with AMX, e.g. MIA-VSR eval 1.5x at 65 dB PSNR
    against the fp32 output) on a CPU with AMX (``amx_bf16``), else ``fp32``: CPUs without AMX run bf16 autocast up
    to ~10x slower than fp32 (AVX2 has no bf16 arithmetic), and on CUDA MIA-VSR gained nothing from bf16 or fp16
    (its kernels are launch-bound; the README's figures)."""
    device = torch.device(device)
    if device.type != 'cpu':
        return 'fp32', f'{device.type}: bf16 / fp16 gained nothing measured there; pass --dtype to choose'
    if BF16_MATRIX_FLAG not in cpu_flags():
        return 'fp32', f'this CPU has no {BF16_MATRIX_FLAG} (bf16 would be slower than fp32)'
    if amx_dtype == 'fp32':
        return 'fp32', 'the network is not measured faster in bf16'
    return amx_dtype, f'the CPU has {BF16_MATRIX_FLAG}'
