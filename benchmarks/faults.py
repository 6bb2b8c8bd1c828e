#!/usr/bin/env python
"""Fault injection: SIGKILL at random moments during checkpoint writes, training-state writes and lmdb builds,
resuming each time; then one table of what survived.

Usage: python benchmarks/faults.py [--kills 20] [--seed 0] [--work DIR]

Training: a small ELSR x2 (32 features) on the sample photo crops (datasets/sample/images/val, built on first
use), with EMA and a cosine schedule, a checkpoint and a training state written every iteration. For each training
kill the harness starts the run (``--auto_resume``), lets it pass a random number (0-4) of writes of the chosen
kind, then, the moment the next one's temporary file appears (polled every 0.2 ms), waits a random 0-3 ms and sends
SIGKILL; whether the process died inside the write is read from the temporary file it left. lmdb:
``scripts/create_lmdb.py`` packing the sample video's 540 REDS frames, killed at a random moment of its build (after
its work folder appears), then rerun to completion.
Runs are forked from this process (imports done once), so a kill costs no interpreter start.

The table: kills by kind and how many landed inside a write; resumes (runs that continued from a saved state);
files checked (every .pth / .state of the experiment, archived folders included, loads with
``torch.load(weights_only=True)``); temporary files left after the final run; each lmdb's ``--verify`` and
whether its keys and values equal an uninterrupted build's; and whether the final loss log (every iteration's
loss and learning rate) equals an uninterrupted run's, bit for bit.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import torch
import yaml

from vsrkit.data.lmdb_io import close_lmdb_envs, incomplete_path, verify_lmdb
from vsrkit.data.sample_data import SAMPLE_BUILDERS
from vsrkit.engine.train_loop import main as train_main
from vsrkit.evaluation.tables import format_table

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / 'datasets' / 'sample'
TOTAL_ITER = 60
WRITE_PATTERNS = {'checkpoint': ('models', '.net_g_*.tmp'), 'state': ('training_states', '.*.state.*.tmp')}


def training_options(work: Path, name: str) -> Path:
    opt = {
        'name': name, 'model_type': 'ImageSRModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 11,
        'datasets': {'train': {
            'type': 'PairedPatchDataset', 'dataroot_gt': 'datasets/sample/images/val/HR.lmdb',
            'dataroot_lq': 'datasets/sample/images/val/LR_bicubic_X2.lmdb', 'io_backend': {'type': 'lmdb'},
            'gt_size': 48, 'patches_per_image': 2, 'batch_size_per_gpu': 4, 'num_worker_per_gpu': 0}},
        'network_g': {'type': 'ELSR', 'scale': 2, 'num_feat': 32},
        'path': {'experiments_root': str(work / 'experiments' / name)},
        'train': {'optim_g': {'type': 'AdamW', 'lr': 2e-3}, 'scheduler': {'type': 'CosineAnnealingLR',
                                                                          'T_max': TOTAL_ITER, 'eta_min': 1e-4},
                  'total_iter': TOTAL_ITER, 'ema_decay': 0.9, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 1, 'use_tb_logger': False},
    }
    path = work / f'{name}.yml'
    path.write_text(yaml.safe_dump(opt))
    return path


def _quiet(log: Path) -> None:
    """In a forked child: its output goes to ``log`` (the table stays readable)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def _train(opt: Path, log: Path, resume: bool) -> None:
    _quiet(log)
    sys.exit(train_main(['-opt', str(opt)] + (['--auto_resume'] if resume else []), root=ROOT))


def _create_lmdb(args: list[str], log: Path) -> None:
    _quiet(log)
    spec = importlib.util.spec_from_file_location('create_lmdb', ROOT / 'scripts' / 'create_lmdb.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.exit(module.main(args))


def start(target, *args) -> multiprocessing.Process:
    process = multiprocessing.get_context('fork').Process(target=target, args=args)
    process.start()
    return process


def temporary_files(folder: Path, pattern: str) -> set[str]:
    return {p.name for p in folder.glob(pattern)} if folder.is_dir() else set()


def kill_during_write(process: multiprocessing.Process, folder: Path, pattern: str, skip: int, rng: random.Random,
                      stale: set[str]) -> tuple[bool, bool]:
    """Let ``skip`` writes matching ``pattern`` in ``folder`` pass, SIGKILL during the next one. ``stale``: the
    temporary files an earlier kill left (the run removes them when it starts); they are not writes of this run.
    Returns (killed, the write's temporary file was left behind: the process died inside the write)."""
    seen = set(stale)
    while process.is_alive():
        fresh = temporary_files(folder, pattern) - seen
        if fresh:
            seen |= fresh
            if skip == 0:
                time.sleep(rng.uniform(0, 0.003))
                os.kill(process.pid, signal.SIGKILL)
                process.join()
                return True, bool(temporary_files(folder, pattern) - set(stale))
            skip -= 1
        time.sleep(0.0002)
    return False, False


def loads(path: Path) -> bool:
    try:
        torch.load(path, map_location='cpu', weights_only=True)
        return True
    except Exception:  # any failure to read is what is being counted
        return False


def loss_log(root: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (root / 'train_log.jsonl').read_text().splitlines()]
    return [(r['iter'], r['l_pixel'], tuple(r['lr'])) for r in rows]


def lmdb_items(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = dict(txn.cursor())
    env.close()
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--kills', type=int, default=20)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work', type=Path, help='working folder (default: a new temporary one)')
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix='vsrkit-faults-'))
    work.mkdir(parents=True, exist_ok=True)
    log = work / 'runs.log'
    rng = random.Random(args.seed)
    SAMPLE_BUILDERS['images'](SAMPLE / 'images')
    SAMPLE_BUILDERS['video'](SAMPLE / 'video')
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    started = time.time()

    reference = start(_train, training_options(work, 'uninterrupted'), log, False)
    reference.join()
    if reference.exitcode != 0:
        print(f'the uninterrupted run failed (exit {reference.exitcode}); see {log}')
        return 1

    kinds = [rng.choice(['checkpoint', 'state', 'checkpoint', 'state', 'lmdb']) for _ in range(args.kills)]
    opt = training_options(work, 'killed')
    root = work / 'experiments' / 'killed'
    killed = {'checkpoint': 0, 'state': 0, 'lmdb': 0}
    inside = dict(killed)
    lmdbs = []
    for kind in kinds:
        if kind == 'lmdb':
            output = work / f'reds_{len(lmdbs)}.lmdb'
            cli = ['--dataset', 'folder', '--input', str(SAMPLE / 'video' / 'REDS'), '--output', str(output)]
            process = start(_create_lmdb, cli, log)
            while process.is_alive() and not incomplete_path(output).exists():
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 1.5))
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                killed['lmdb'] += 1
                inside['lmdb'] += int(incomplete_path(output).exists() and not output.exists())
            process.join()
            rerun = start(_create_lmdb, cli, log)
            rerun.join()
            lmdbs.append((output, rerun.exitcode))
            continue
        folder, pattern = WRITE_PATTERNS[kind]
        stale = temporary_files(root / folder, pattern)
        process = start(_train, opt, log, True)
        done, in_write = kill_during_write(process, root / folder, pattern, rng.randint(0, 4), rng, stale)
        process.join()
        killed[kind] += int(done)
        inside[kind] += int(in_write)

    # the final run: resumes and finishes
    final = start(_train, opt, log, True)
    final.join()
    resumes = log.read_text().count('INFO: Resumed from')
    leftovers = list(root.rglob('.*.tmp'))
    files = sorted(p for p in (work / 'experiments').rglob('*') if p.suffix in ('.pth', '.state'))
    loaded = sum(loads(p) for p in files)
    expected, resumed = loss_log(work / 'experiments' / 'uninterrupted'), loss_log(root) if final.exitcode == 0 else []

    reference_lmdb = work / 'reds_uninterrupted.lmdb'
    build = start(_create_lmdb, ['--dataset', 'folder', '--input', str(SAMPLE / 'video' / 'REDS'), '--output',
                                 str(reference_lmdb)], log)
    build.join()
    reference_items = lmdb_items(reference_lmdb)
    lmdb_rows = []
    for output, code in lmdbs:
        try:
            verified = f'{verify_lmdb(output)} keys verified'
        except (OSError, ValueError) as err:
            verified = f'FAILED: {err}'
        close_lmdb_envs()  # verify's read handle: py-lmdb opens an environment once per process
        same = code == 0 and lmdb_items(output) == reference_items
        lmdb_rows.append(f'{output.name}: {verified}, identical to an uninterrupted build: {"yes" if same else "NO"}')

    rows = [
        {'what': 'kills (SIGKILL)', 'result': f"{sum(killed.values())}: {killed['checkpoint']} during checkpoint "
                                              f"writes, {killed['state']} during training-state writes, "
                                              f"{killed['lmdb']} during lmdb builds"},
        {'what': 'kills that landed inside the write', 'result': f"{inside['checkpoint']} checkpoint, "
                                                                 f"{inside['state']} state, {inside['lmdb']} lmdb "
                                                                 '(temporary file / work folder left behind)'},
        {'what': 'resumes (runs that continued from a saved state)', 'result': str(resumes)},
        {'what': 'final run', 'result': f'exit {final.exitcode}'},
        {'what': 'files checked (.pth/.state load)', 'result': f'{loaded}/{len(files)} load'},
        {'what': 'temporary files left after the final run', 'result': str(len(leftovers))},
        *({'what': 'lmdb --verify', 'result': row} for row in lmdb_rows),
        {'what': 'final loss log == uninterrupted run', 'result': f"{'yes' if resumed == expected else 'NO'} "
                                                                  f'({len(resumed)} vs {len(expected)} iterations; '
                                                                  'loss and lr, bit for bit)'},
        {'what': 'wall time', 'result': f'{time.time() - started:.0f} s'},
    ]
    print(format_table(rows, ['what', 'result']))
    print(f'(runs logged to {log})')
    ok = (final.exitcode == 0 and resumed == expected and loaded == len(files) and not leftovers
          and all('identical to an uninterrupted build: yes' in row for row in lmdb_rows))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
