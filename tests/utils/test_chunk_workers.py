"""vsrkit.utils.chunk_workers: chunks on single-threaded workers, with the caller's grad, inference-mode and
autocast settings."""
from __future__ import annotations

import threading

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from vsrkit.utils.chunk_workers import chunk_plan, map_chunks

CPU = torch.device('cpu')


def test_workers_only_where_results_cannot_change_and_the_work_is_worth_it(monkeypatch):
    monkeypatch.setattr(torch, 'get_num_threads', lambda: 2)
    with torch.no_grad():
        assert chunk_plan(256, 256, 128, CPU) == (2, 128)
        assert chunk_plan(255, 256, 128, CPU) == (1, 256)  # less than the minimum each
        assert chunk_plan(10 ** 6, 256, 128, torch.device('meta')) == (1, 256)  # not the CPU
        assert chunk_plan(920, 256, 128, CPU) == (2, 230)  # four even chunks, not 256, 256, 256, 152
        assert chunk_plan(1024, 256, 128, CPU) == (2, 256)
        assert chunk_plan(10 ** 6, 256, 128, CPU) == (2, 256)  # 3908 chunks of at most 256
        assert chunk_plan(300, 256, 128, CPU) == (2, 150)
    assert chunk_plan(10 ** 6, 256, 128, CPU) == (1, 256)  # autograd on
    monkeypatch.setattr(torch, 'get_num_threads', lambda: 1)
    with torch.no_grad():
        assert chunk_plan(10 ** 6, 256, 128, CPU) == (1, 256)
        assert chunk_plan(920, 256, 128, CPU) == (1, 256)


def test_chunks_run_on_single_threaded_workers_in_order_without_grad_and_with_the_callers_autocast():
    a, b = torch.randn(8, 8, requires_grad=True), torch.randn(8, 8)

    def chunk(i: int) -> tuple:
        out = (a * i) @ b
        return i, threading.current_thread().name, torch.get_num_threads(), out.dtype, out.requires_grad

    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        results = map_chunks(chunk, list(range(6)), 2)
    assert [r[0] for r in results] == list(range(6))
    assert all(name.startswith('vsrkit-chunk') for _, name, *_ in results)
    assert {r[2:] for r in results} == {(1, torch.bfloat16, False)}
    with torch.no_grad():
        plain = map_chunks(chunk, [1, 2], 2)
    assert {r[3] for r in plain} == {torch.float32}
    with torch.inference_mode():  # as the upscaling pipeline runs: in-place writes to its tensors stay allowed
        made = torch.zeros(4)
        assert map_chunks(lambda i: (made.add_(1), torch.is_inference_mode_enabled())[1], [0, 1], 2) == [True] * 2
    assert made.tolist() == [2.0] * 4
    # one worker: the caller itself, its settings as they are
    assert map_chunks(chunk, [3], 2)[0][1:] == (threading.current_thread().name, torch.get_num_threads(),
                                                  torch.float32, True)


def test_no_workers_while_the_callers_ops_are_watched_or_traced(monkeypatch):
    """Modes, tracing and export are per thread: ops on a worker would escape them (a FLOP count, an ONNX graph)."""
    monkeypatch.setattr(torch, 'get_num_threads', lambda: 2)
    with torch.no_grad():
        assert chunk_plan(10 ** 6, 256, 128, CPU)[0] == 2
        with FlopCounterMode(display=False):
            assert chunk_plan(10 ** 6, 256, 128, CPU)[0] == 1
        with TorchFunctionMode():
            assert chunk_plan(10 ** 6, 256, 128, CPU)[0] == 1
        traced = torch.jit.trace(lambda x: x + chunk_plan(10 ** 6, 256, 128, CPU)[0], torch.zeros(1))
    assert traced(torch.zeros(1)).item() == 1


def test_costliest_chunks_go_first_and_results_keep_the_items_order():
    """Workers take the costliest chunks first (the small ones even out the end); results come back in order."""
    started, lock = [], threading.Lock()

    def chunk(i: int) -> int:
        with lock:
            started.append(i)
        return i * 10

    with torch.no_grad():
        results = map_chunks(chunk, list(range(6)), 2, costs=[1, 6, 2, 5, 3, 4])
    assert results == [0, 10, 20, 30, 40, 50]
    assert set(started[:2]) == {1, 3} and set(started[-2:]) == {0, 2}
