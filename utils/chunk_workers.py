"""Independent chunks of CPU eval work on single-threaded workers, one per intra-op thread (:func:`map_chunks`).

Why: a chunk of MIA-VSR's window attention is some thirty small ops. With intra-op threads each op is a parallel
region ending in a barrier: small ops divide poorly between threads, and on a shared machine a descheduled thread
stalls the others at thousands of barriers per frame. Workers that each run whole chunks with one thread meet once
per call instead.

Only for CPU tensors with autograd off, and never while the caller's ops are traced, exported, compiled or watched
by a Python mode such as FlopCounterMode (all per thread). Each worker runs its chunks under ``no_grad`` and the
caller's inference-mode and CPU autocast settings (thread-local in PyTorch). Each chunk is computed as a one-thread run
would compute it: against intra-op threads, results differ by rounding only, as with any other thread count. The
workers are created on first use in a process (a forked child makes its own), as many as the caller's
``torch.get_num_threads()``; a caller at one thread, or with autograd on, runs the chunks itself, in order.
Callers size their chunks with :func:`chunk_plan`, giving the least work per worker that pays for handing chunks
over (~1 ms a chunk: the GIL between the ops of two threads).
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

Item = TypeVar('Item')
Result = TypeVar('Result')

_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)


def _single_threaded() -> None:
    # OpenMP's and MKL's thread counts are per thread: this worker's ops run on it alone
    torch.set_num_threads(1)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[:2] != (os.getpid(), workers):
            _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, 'vsrkit-chunk', _single_threaded))
        return _pool[2]


def chunk_plan(items: int, cap: int, minimum: int, device: torch.device) -> tuple[int, int]:
    """(workers, units per chunk) for a call with ``items`` units of work. Workers: one per intra-op thread, on
    the CPU with autograd off and nothing recording the caller's ops, where each gets at least ``minimum`` units;
    else 1 (the caller itself). Chunks: ``cap`` units for the caller alone; with workers, one chunk each where
    ``cap`` allows."""
    if device.type != 'cpu' or torch.is_grad_enabled() or _recorded():
        return 1, cap
    workers = max(1, min(torch.get_num_threads(), items // minimum))
    return workers, cap if workers == 1 else max(1, min(cap, math.ceil(items / workers)))


def _recorded() -> bool:
    """Whether the caller's ops are being traced, exported, compiled or watched by a Python mode (FLOP counters,
    debug modes): all of these are per thread and would miss the ops the workers run."""
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
            or torch._C._len_torch_function_stack() > 0 or _get_current_dispatch_mode() is not None)


def map_chunks(fn: Callable[[Item], Result], items: Sequence[Item], workers: int) -> list[Result]:
    """``[fn(item) for item in items]``, in order; on ``workers`` single-threaded workers where that is > 1."""
    if workers == 1 or len(items) < 2:
        return [fn(item) for item in items]
    autocast = torch.is_autocast_enabled('cpu')
    dtype = torch.get_autocast_dtype('cpu')
    inference = torch.is_inference_mode_enabled()

    def run(item: Item) -> Result:
        with torch.inference_mode(inference), torch.no_grad(), torch.autocast('cpu', dtype=dtype, enabled=autocast):
            return fn(item)

    return list(_executor(workers).map(run, items))
