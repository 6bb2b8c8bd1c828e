"""Shared test fixtures: the reference material and real images/clips from installed packages."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip('torch')
torch.set_num_threads(min(2, os.cpu_count() or 1))

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = PROJECT_ROOT.parent / 'shared' / 'reference'


@pytest.fixture(scope='session')
def reference_dir() -> Path:
    """../shared/reference (checkpoints and key lists of the original systems); skips where absent."""
    if not REFERENCE.is_dir():
        pytest.skip(f'reference material not found at {REFERENCE} (only present in the vsrkit workspace)')
    return REFERENCE


@pytest.fixture(scope='session')
def reference_checkpoint(reference_dir):
    def get(name: str) -> Path:
        path = reference_dir / 'checkpoints' / name
        if not path.is_file():
            pytest.skip(f'reference checkpoint {path} is absent')
        return path
    return get


@pytest.fixture(scope='session')
def reference_keys(reference_dir):
    """Returns [(key, shape, dtype), ...] from state_dicts/<name>.json."""
    def get(name: str) -> list[tuple[str, tuple[int, ...], str]]:
        path = reference_dir / 'state_dicts' / f'{name}.json'
        if not path.is_file():
            pytest.skip(f'reference key list {path} is absent')
        return [(k, tuple(s), d) for k, s, d in json.loads(path.read_text())['entries']]
    return get


@pytest.fixture(scope='module')
def single_thread():
    """One torch thread for a module of tiny-tensor tests: on 2 shared cores thread hand-offs cost more than
    they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
