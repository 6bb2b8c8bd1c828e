"""The experiment folder of a training run: locked while the run lives, archived only when that is safe, and the
training states ``--auto_resume`` may continue from.

A run holds an advisory lock (``fcntl.flock``) on ``<experiments_root>/.run.lock`` from start to exit; the file
names the holder (pid, host, start time), so a second run of the same name stops at once with one line naming
the first. The kernel drops the lock when the holder dies, even by SIGKILL, so a dead run never blocks the next
one. (flock is reliable on local disks; on NFS it depends on the mount's lock support.)

BasicSR renames an existing experiment folder to ``<name>_archived_<time>`` when a run starts afresh; here that
happens only after every check has passed (datasets and network built, the resume state loaded) and only while
holding the folder's lock, so a folder in use is never moved.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from vsrkit.utils.checkpoint import latest_training_state
from vsrkit.utils.signature import OptionsError

LOCK_NAME = '.run.lock'


class ExperimentInUse(OptionsError):
    """Another live run holds the experiment folder."""


def _holder_text(raw: str) -> str:
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return 'a process that has not written its name yet'


def _in_use_message(root: Path, holder: str) -> str:
    return (f'experiment folder {root} is in use by a running training ({holder}); wait for it to end, stop it, or '
            'choose another name')


class ExperimentLock:
    """The advisory lock of one experiment folder (see module docstring). Not re-entrant: one per run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> 'ExperimentLock':
        """Take the lock (creating the folder if needed) or raise ExperimentInUse naming the holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(os.pread(fd, 4096, 0).decode('utf-8', 'replace'))
            os.close(fd)
            raise ExperimentInUse(_in_use_message(self.root, holder)) from None
        info = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.strftime('%Y-%m-%d %H:%M:%S %z')}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def holder_of(root: str | Path) -> str | None:
    """Who holds the lock of ``root`` (a description), or None when no live run does. Creates nothing."""
    path = Path(root) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _holder_text(os.pread(fd, 4096, 0).decode('utf-8', 'replace'))
    finally:
        os.close(fd)


def check_not_in_use(root: str | Path) -> None:
    """Raise ExperimentInUse when a live run holds ``root`` (for ``--check-only``, before any process starts)."""
    holder = holder_of(root)
    if holder is not None:
        raise ExperimentInUse(_in_use_message(Path(root), holder))


def has_previous_run(root: Path) -> bool:
    """Whether ``root`` holds anything besides its lock file (what an earlier run leaves)."""
    return root.is_dir() and any(entry.name != LOCK_NAME for entry in root.iterdir())


def archive_previous(lock: ExperimentLock) -> tuple[ExperimentLock, Path]:
    """Rename the locked folder to ``<name>_archived_<time>`` and lock a fresh, empty folder in its place.

    The old lock is held through the rename (the lock file moves with the folder), so no other run can have
    been using the folder; it is released only once the new one is held. Returns (new lock, archived path)."""
    root = lock.root
    archived = _archive_name(root)
    root.rename(archived)
    try:
        fresh = ExperimentLock(root).acquire()
    finally:
        lock.release()
        (archived / LOCK_NAME).unlink(missing_ok=True)
    return fresh, archived


def _archive_name(folder: Path) -> Path:
    """An unused ``<name>_archived_<time>`` beside ``folder``."""
    name = f"{folder.name}_archived_{time.strftime('%Y%m%d_%H%M%S')}"
    archived, suffix = folder.with_name(name), 1
    while archived.exists():  # two fresh starts within one second
        archived = folder.with_name(f'{name}_{suffix}')
        suffix += 1
    return archived


def archive_event_files(folder: Path) -> Path | None:
    """A fresh start's TensorBoard folder (``path.tb_logger``, outside the experiment folder, as in BasicSR): where
    an earlier run left event files, the folder is renamed to ``<name>_archived_<time>`` (TensorBoard would draw
    them and the new run's as one run, steps 1..N twice); returns where it went, or None. Call under the
    experiment's lock (the folder is named after the experiment)."""
    if not folder.is_dir() or not any(folder.rglob('events.out.tfevents.*')):
        return None
    archived = _archive_name(folder)
    folder.rename(archived)
    return archived


def remove_interrupted_writes(*folders: str | Path) -> list[Path]:
    """Delete the temporary files of atomic writes a killed run left (``.<name>.<random>.tmp``, see
    ``vsrkit.utils.atomic``); call only while holding the folder's lock, when no writer can be active."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            for leftover in folder.glob('.*.tmp'):
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
    return removed


def archived_states(root: Path) -> list[Path]:
    """The latest training state in each ``<name>_archived_*`` sibling of ``root``, newest folder first."""
    found = []
    for folder in sorted(root.parent.glob(f'{root.name}_archived_*'), reverse=True):
        state = latest_training_state(folder / 'training_states')
        if state is not None:
            found.append(state)
    return found


def resume_state(opt: dict, auto_resume: bool) -> Path | None:
    """The training state to resume from: ``path.resume_state``, else with ``auto_resume`` the latest state in
    the experiment's training_states. Never silently starts over: with ``auto_resume`` and no state there but
    states of the same experiment in an archived folder, raises OptionsError saying where they are."""
    paths = opt['path']
    if paths.get('resume_state'):
        state = Path(paths['resume_state'])
        if not state.is_file():
            raise OptionsError(f'path.resume_state: {state} does not exist')
        return state
    if not auto_resume:
        return None
    state = latest_training_state(paths['training_states'])
    if state is not None:
        return state
    elsewhere = archived_states(Path(paths['experiments_root']))
    if elsewhere:
        raise OptionsError(f"--auto_resume: {paths['training_states']} holds no training state, but this "
                           f'experiment has states in an archived folder (latest: {elsewhere[0]}); resume from it '
                           f"with --force_yml path:resume_state={elsewhere[0]}, or start over without --auto_resume")
    return None
