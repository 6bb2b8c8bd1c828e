"""Fewer intra-op threads while other processes keep this process's CPUs busy (:func:`threads_beside_load`).

Why: with one torch thread per core, every parallel region ends in a barrier where the threads wait for each
other; when another CPU-bound process takes one of the cores, the thread that loses it stalls the rest at
every barrier, and the run takes several times longer than it would with one thread fewer. Measured, MIA-VSR
eval of a 5-frame 64x64 LR clip on 2 cores: 12.9 s quiet; beside one busy process 48.2 s with 2 threads, 23.0 s
with this (it ran the branches with 1).

:class:`OtherLoad` reads how many of the CPUs this process may run on were busy with other processes between
two readings: the busy time of those CPUs in ``/proc/stat`` minus this process's own CPU time. Linux only;
elsewhere, or with ``VSRKIT_LOAD_AWARE_THREADS=0``, nothing changes. Results differ by rounding only, as with
any other thread count.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from typing import Iterator

import torch

ENV = 'VSRKIT_LOAD_AWARE_THREADS'
MIN_WINDOW = 0.1  # seconds between readings: /proc/stat counts in ticks of 10 ms per CPU
TAKEN = 0.5  # a CPU counts as taken by others when they kept it busy at least this share of the time


class OtherLoad:
    """CPUs of this process's affinity set kept busy by other processes, on average between readings."""

    def __init__(self, stat_path: str = '/proc/stat') -> None:
        self._stat_path = stat_path
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []
        self._last = self._reading()

    def _reading(self) -> tuple[float, float, float] | None:
        """(wall seconds, busy CPU seconds of the affinity set, this process's CPU seconds), or None."""
        try:
            with open(self._stat_path) as stat:
                lines = stat.readlines()
        except OSError:
            return None
        wanted = {f'cpu{cpu}' for cpu in self.cpus}
        busy = 0
        for line in lines:
            name, *fields = line.split()
            if name in wanted:
                # not steal: a hypervisor's other guests come and go with the host, not with this machine's work
                user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
                busy += user + nice + system + irq + softirq
        return time.monotonic(), busy / os.sysconf('SC_CLK_TCK'), time.process_time()

    def since_last(self) -> float | None:
        """Busy CPUs of other processes (0 .. len(cpus)) since the previous reading, which this one replaces;
        None where unknown or when the window is shorter than MIN_WINDOW (the previous reading is kept)."""
        last = self._last
        if last is None or time.monotonic() - last[0] < MIN_WINDOW:
            return None
        now = self._reading()
        if now is None:
            return None
        self._last = now
        return max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0])


def load_aware() -> bool:
    """Whether load-aware threads are on (``VSRKIT_LOAD_AWARE_THREADS=0`` turns them off)."""
    return os.environ.get(ENV, '1') != '0'


def threads_for(requested: int, cpus: int, others: float | None) -> int:
    """Intra-op threads for a process that asked for ``requested`` on ``cpus`` CPUs while others keep ``others``
    of them busy: one fewer for each CPU they take (:data:`TAKEN`), never below 1; ``requested`` when unknown."""
    if others is None:
        return requested
    return max(1, min(requested, cpus - math.floor(others + 1 - TAKEN)))


@contextmanager
def threads_beside_load(load: OtherLoad | None) -> Iterator[int]:
    """Run the block with :func:`threads_for` threads of the caller's current count, from ``load``'s reading
    since its last one (None: unchanged); the caller's count is restored after. Yields the count used."""
    requested = torch.get_num_threads()
    if load is None or not load_aware():
        yield requested
        return
    threads = threads_for(requested, len(load.cpus), load.since_last())
    if threads == requested:
        yield requested
        return
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(requested)
