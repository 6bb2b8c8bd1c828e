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
    else 1 (the caller itself). Chunks: ``cap`` units for the caller alone; with workers, at most ``cap`` and as
    many chunks as a multiple of the workers, so that they divide the work evenly (920 windows in chunks of 256
    left one worker 512 and the other 408; in four of 230 each gets 460)."""
    if device.type != 'cpu' or torch.is_grad_enabled():
        return 1, cap
    workers = max(1, min(torch.get_num_threads(), items // minimum))
    if workers == 1 or _recorded():  # the costlier check (several us) last: a 64x64 LR call asks ~1000 times
        return 1, cap
    chunks = math.ceil(items / (workers * cap)) * workers
    return workers, max(1, math.ceil(items / chunks))


def _recorded() -> bool:
    """Whether the caller's ops are being traced, exported, compiled or watched by a Python mode (FLOP counters,
    debug modes): all of these are per thread and would miss the ops the workers run."""
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
            or torch._C._len_torch_function_stack() > 0 or _get_current_dispatch_mode() is not None)


def map_chunks(fn: Callable[[Item], Result], items: Sequence[Item], workers: int,
               costs: Sequence[float] | None = None) -> list[Result]:
    """``[fn(item) for item in items]``, in order; on ``workers`` single-threaded workers where that is > 1. With
    ``costs`` (one estimate per item), the workers take the costliest items first, so that the small ones even out
    the end (results still come in the items' order)."""
    if workers == 1 or len(items) < 2:
        return [fn(item) for item in items]
    autocast = torch.is_autocast_enabled('cpu')
    dtype = torch.get_autocast_dtype('cpu')
    inference = torch.is_inference_mode_enabled()

    def run(item: Item) -> Result:
        with torch.inference_mode(inference), torch.no_grad(), torch.autocast('cpu', dtype=dtype, enabled=autocast):
            return fn(item)

    order = range(len(items)) if costs is None else sorted(range(len(items)), key=lambda i: -costs[i])
    results = dict(zip(order, _executor(workers).map(run, [items[i] for i in order])))
    return [results[i] for i in range(len(items))]
