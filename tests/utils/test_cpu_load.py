"""vsrkit.utils.cpu_load: other processes' load read from /proc/stat, and one thread fewer per CPU they take."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from vsrkit.utils.cpu_load import ENV, OtherLoad, threads_beside_load, threads_for
from stubs import FixedLoad

linux = pytest.mark.skipif(not os.path.exists('/proc/stat') or not hasattr(os, 'sched_getaffinity'),
                           reason='reads /proc/stat (Linux)')


def test_one_thread_fewer_per_cpu_that_others_take():
    assert threads_for(2, 2, None) == 2  # unknown: as asked
    assert threads_for(2, 2, 0.3) == 2  # a CPU counts as taken from half its time on
    assert threads_for(2, 2, 0.67) == 1  # one busy process beside two threads of ours gets ~2/3 of a CPU
    assert threads_for(2, 2, 2.0) == 1  # never below one
    assert threads_for(8, 8, 2.6) == 5
    assert threads_for(4, 16, 3.0) == 4  # never above what was asked


def test_threads_beside_load_sets_and_restores_the_callers_count(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with threads_beside_load(FixedLoad(1.0)) as used:
            assert used == torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with threads_beside_load(FixedLoad(0.0)) as used:
            assert used == torch.get_num_threads() == 2
        with threads_beside_load(None) as used:
            assert used == 2
        monkeypatch.setenv(ENV, '0')
        with threads_beside_load(FixedLoad(1.0)) as used:
            assert used == torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@linux
def test_other_load_sees_a_busy_process_but_not_this_ones_own_work():
    """Differences between windows, so that a machine's background load cancels out."""
    load = OtherLoad()
    time.sleep(0.6)
    idle = load.since_last()
    end = time.monotonic() + 0.6
    while time.monotonic() < end:  # this process busy: its own time is not the others'
        pass
    spinning = load.since_last()
    busy = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(0.3)
        load.since_last()
        time.sleep(1.0)
        loaded = load.since_last()
    finally:
        busy.kill()
        busy.wait()
    assert None not in (idle, spinning, loaded)
    assert abs(spinning - idle) < 0.4 and loaded - idle > 0.5, (idle, spinning, loaded)
    assert load.since_last() is None  # a window under MIN_WINDOW tells nothing
