"""Keep freed memory in the process for reuse (glibc malloc), so that large CPU tensors are not page-faulted in anew.

PyTorch's CPU tensors come from the C allocator. glibc hands blocks above its mmap threshold (at most 32 MB) to
the kernel on every free and maps fresh, zero-filled pages on every allocation, and trims the heap's top when more
than twice that is free: every new large tensor then costs a page fault per 4 KB. For the recurrent video networks
this is most of the system time: MIA-VSR at 180x320 LR keeps a state of ~2 GB per propagation branch, rewritten
every frame, and its upsampler's HR tensors are ~240 MB each; measured there (2 cores, 2-frame clip): 4.8 M page
faults and 31 s of system time in 100 s with glibc's defaults, against 2 faults and 4.6 s for the same work once the
heap held enough memory. With memory kept, a masked steady-state frame of a 3-frame 180x320 clip took 0.87x the
mask-disabled one (38.9 against 44.8 s, benchmarks/miavsr_speed.py); before (and before a branch released its old
states as it replaced them) 1.5x (65.6 against 43.0 s).

:func:`retain_freed_memory` sets glibc's ``M_MMAP_MAX`` to 0 (every block from the heap) and ``M_TRIM_THRESHOLD``
to 2 GB, the largest it takes (freed heap memory stays mapped, up to that much at the heap's top), so after the first
frames a long clip allocates without faults; the process's resident memory stays near its peak instead of shrinking
between frames. The command-line entry points (training, evaluation, upscaling) call it at start-up;
``VSRKIT_RETAIN_FREED_MEMORY=0`` leaves glibc's defaults.
Other C libraries (musl, macOS, Windows) are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc's <malloc.h> parameter numbers
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_BYTES = 2 ** 31 - 1  # mallopt's value is a C int
ENV = 'VSRKIT_RETAIN_FREED_MEMORY'


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (module docstring); True when applied, False where it does not apply
    (not glibc, or ``VSRKIT_RETAIN_FREED_MEMORY=0``)."""
    if os.environ.get(ENV, '1') == '0' or platform.libc_ver()[0] != 'glibc':
        return False
    libc = ctypes.CDLL(ctypes.util.find_library('c'))
    # mallopt returns 1 on success
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1
