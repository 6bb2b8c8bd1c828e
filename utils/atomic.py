"""Atomic file writes: write beside the target, fsync, then rename — a reader never sees a half-written file
and a kill at any moment leaves either the old file or the new one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import torch


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO], None], mode: str = 'wb') -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the result gets what open() would give
        with os.fdopen(fd, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text), mode='w')
