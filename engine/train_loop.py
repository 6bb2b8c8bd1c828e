"""The training pipeline behind ``train.py`` / ``dist_train.sh`` (one process, or torchrun DDP on CPU or CUDA).

Reuses basicsr's registries, datasets, metrics and model interface; replaces what basicsr hard-wires to CUDA
(process-group set-up, resume mapping, metric tensors) and what does not resume exactly (samplers).
One iteration is one optimizer step over ``accumulate_grad_batches`` micro-batches.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import logging.handlers
import os
import pickle
import random
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
import basicsr.utils.logger as basicsr_logging
import vsrkit.data
from vsrkit.data.sample_data import ensure_sample_data
from vsrkit.data.sampling import SeededSamples, ShardedEpochSampler
from vsrkit.utils.dist import DistInfo, any_rank, barrier, cleanup, init_distributed
from vsrkit.engine.data_faults import DataFault, GuardedSamples, collate_or_fault, describe_error
from vsrkit.engine.experiment import (ExperimentLock, archive_event_files, archive_previous, check_not_in_use,
                                      has_previous_run, remove_interrupted_writes, resume_state)
from vsrkit.archs.loader import check_state_dict_fits
from vsrkit.engine.option_checks import check_options, check_training_set_fits
from vsrkit.engine.options import dump_options, load_options
from vsrkit.evaluation.tables import validation_table
from vsrkit.models.base import unwrap
from vsrkit.models.basicsr_driver import build_driven_model
from vsrkit.utils.atomic import atomic_write_text
from vsrkit.utils.cpu_allocator import retain_freed_memory
from vsrkit.utils.signature import OptionsError

logger = logging.getLogger('vsrkit')
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
DATA_FAULT_EXIT = 3  # a training sample could not be read (2: bad options or a folder in use)
LOG_FORMAT = logging.Formatter('%(asctime)s %(levelname)s: %(message)s', '%Y-%m-%d %H:%M:%S')
# the checkout this module runs from (train.py beside engine/): relative paths in options resolve against it, from
# train.py and from the vsrkit-train entry point alike, whatever the working directory
CHECKOUT = Path(__file__).resolve().parents[1]


def default_root() -> Path:
    """The root relative option paths resolve against: the checkout; the working directory for a copy installed
    without one (a wheel)."""
    return CHECKOUT if (CHECKOUT / 'train.py').is_file() else Path.cwd()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a vsrkit/BasicSR model from a YAML options file.')
    parser.add_argument('-opt', '--opt', required=True, help='path to the options YAML file')
    parser.add_argument('--launcher', default='none',
                        help='accepted for BasicSR compatibility; torchrun\'s environment decides')
    parser.add_argument('--auto_resume', action='store_true', help='resume from the latest training state')
    parser.add_argument('--debug', action='store_true', help='a few iterations, frequent logging and saving')
    parser.add_argument('--force_yml', nargs='+', default=[], help="override options: 'train:ema_decay=0.999'")
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--check-only', action='store_true',
                        help='check the options and create missing sample data, then exit (dist_train.sh runs this)')
    return parser.parse_args(argv)


def setup_logging(info: DistInfo) -> None:
    """Console logging; on rank 0 the records are also kept until :func:`attach_log_file` (the experiment folder
    is prepared only after every check has passed)."""
    close_logging()
    logger.propagate = False
    logger.setLevel(logging.INFO if info.is_main else logging.WARNING)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(LOG_FORMAT)
    logger.addHandler(console)
    if info.is_main:
        logger.addHandler(logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1))
    route_basicsr_logging(info)


class ToVsrkitLog(logging.Handler):
    """Passes basicsr's log records to vsrkit's logger (its handlers: console, log file)."""

    def emit(self, record: logging.LogRecord) -> None:
        logger.handle(record)


def route_basicsr_logging(info: DistInfo) -> None:
    """basicsr's model types and the validation lines in basicsr's format log to basicsr's logger: send it to
    vsrkit's, and mark it initialised so that basicsr's get_root_logger adds no console handler of its own."""
    basicsr_logger = logging.getLogger('basicsr')
    for handler in [h for h in basicsr_logger.handlers if isinstance(h, ToVsrkitLog)]:
        basicsr_logger.removeHandler(handler)
    basicsr_logger.addHandler(ToVsrkitLog())
    basicsr_logger.setLevel(logging.INFO if info.is_main else logging.WARNING)
    basicsr_logger.propagate = False
    basicsr_logging.initialized_logger['basicsr'] = True


def attach_log_file(opt: dict) -> None:
    """Start the log file and write into it what was logged before the folder existed."""
    log_file = Path(opt['path']['log']) / f"train_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(LOG_FORMAT)
    for buffer in [h for h in logger.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
        buffer.setTarget(handler)
        buffer.close()  # flushes the kept records into the file
        logger.removeHandler(buffer)
    logger.addHandler(handler)


def close_logging() -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def prepare_experiment_dirs(opt: dict, lock: ExperimentLock, resuming: bool) -> ExperimentLock:
    """Create the experiment folders (under ``lock``, which this process holds). Starting afresh, an earlier
    experiment of the same name is archived first (BasicSR's behaviour); returns the lock now held."""
    if not resuming and has_previous_run(lock.root):
        lock, archived = archive_previous(lock)
        logger.info(f'Existing experiment folder moved to {archived}')
    for key in ('experiments_root', 'models', 'training_states', 'log', 'visualization'):
        Path(opt['path'][key]).mkdir(parents=True, exist_ok=True)
    for leftover in remove_interrupted_writes(opt['path']['models'], opt['path']['training_states']):
        logger.info(f'Removed {leftover}, the temporary file of a write a killed run left')
    return lock


def truncate_history(history: Path, last_iter: int) -> None:
    """Keep the loss-log lines up to ``last_iter`` (the resumed state): lines logged after that state by a run that
    was stopped, and a line cut short by a kill, would otherwise repeat or break the log."""
    if not history.is_file():
        return
    kept = []
    for line in history.read_text().splitlines():
        try:
            if json.loads(line)['iter'] <= last_iter:
                kept.append(line + '\n')
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(history, ''.join(kept))


class StopRequest:
    """First SIGINT/SIGTERM: finish the iteration, save a resumable state, exit. Second: stop at once.
    ``announce``: say so when the signal arrives (rank 0 only: under torchrun every process gets the signal)."""

    def __init__(self, announce: bool = True) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._previous: dict[int, object] = {}

    def __enter__(self) -> 'StopRequest':
        self._previous = {signum: signal.signal(signum, self._handle) for signum in EXIT_CODES}
        return self

    def __exit__(self, *exc) -> None:
        # the handlers are process-wide: left installed, they would outlive training in the caller's process and
        # in every process it forks later (a multiprocessing worker would then ignore Pool.terminate's SIGTERM)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            print(f'\n{signal.Signals(signum).name} received: saving a resumable state after this iteration '
                  '(send it again to stop at once)', flush=True)


class Progress:
    """Iteration rate and ETA over the training time (validation and saving excluded)."""

    def __init__(self, start_iter: int, total_iter: int) -> None:
        self.start_iter, self.total_iter = start_iter, total_iter
        self.train_seconds = 0.0
        self._mark = time.perf_counter()

    def pause(self) -> None:
        self.train_seconds += time.perf_counter() - self._mark

    def resume(self) -> None:
        self._mark = time.perf_counter()

    def rate(self, current_iter: int) -> float:
        elapsed = self.train_seconds + time.perf_counter() - self._mark
        return (current_iter - self.start_iter) / max(elapsed, 1e-9)

    def line(self, current_iter: int) -> str:
        rate = self.rate(current_iter)
        eta = timedelta(seconds=int((self.total_iter - current_iter) / max(rate, 1e-9)))
        return f'{rate:.2f} it/s, eta {eta}'


def build_dataset(phase: str, dataset_opt: dict):
    """The dataset of ``datasets.<phase>``; what its construction finds wrong with the data (a missing key or file,
    sizes that disagree) becomes one OptionsError line, raised before the experiment folder is touched."""
    try:
        return vsrkit.data.build_dataset(dataset_opt, where=f'datasets.{phase}')
    except OptionsError:  # an unknown type: already one line naming the option
        raise
    except (KeyError, ValueError, OSError) as err:
        raise OptionsError(f"datasets.{phase} ({dataset_opt['type']}): {describe_error(err)}") from None


class Trainer:
    def __init__(self, opt: dict, info: DistInfo, auto_resume: bool) -> None:
        self.opt, self.info = opt, info
        self.train_opt = opt['train']
        self.logger_opt = opt.get('logger') or {}
        self.seed = int(opt.get('manual_seed', 0))
        self.lock: ExperimentLock | None = None
        self.tb = None
        if info.is_main:  # held for the run's life: a second run of this name stops here, before touching anything
            self.lock = ExperimentLock(opt['path']['experiments_root']).acquire()
        try:
            self.state_path = resume_state(opt, auto_resume)
            if info.is_main:
                ensure_sample_data(opt)
        except BaseException:
            self.close()
            raise
        barrier()
        setup_logging(info)
        seed_everything(self.seed + info.rank, bool(opt.get('deterministic', False)))
        self.history = Path(opt['path']['experiments_root']) / 'train_log.jsonl'
        # logger.rank_log: every process logs its own view (samples, unreduced losses, a digest of its weights), so
        # a DDP run can be checked: disjoint shards, different losses, identical weights
        self.rank_log = (Path(opt['path']['experiments_root']) / f'train_log_rank{info.rank}.jsonl'
                         if self.logger_opt.get('rank_log') else None)
        self.batch_indices: list[int] = []

    def build_loaders(self) -> None:
        train_opt = dict(self.opt['datasets']['train'])
        train_opt.setdefault('name', 'train')
        dataset = build_dataset('train', train_opt)
        self.train_set = SeededSamples(dataset, self.seed)
        self.sampler = ShardedEpochSampler(len(dataset), num_replicas=self.info.world_size, rank=self.info.rank,
                                           shuffle=train_opt.get('use_shuffle', True), seed=self.seed,
                                           enlarge_ratio=int(train_opt.get('dataset_enlarge_ratio', 1)))
        self.loader_seed = torch.Generator()
        where = f"datasets.train ({train_opt['type']})"
        self.loader = DataLoader(GuardedSamples(self.train_set, where), batch_size=train_opt['batch_size_per_gpu'],
                                 sampler=self.sampler, collate_fn=collate_or_fault,
                                 num_workers=int(train_opt.get('num_worker_per_gpu', 0)), drop_last=True,
                                 pin_memory=self.info.device.type == 'cuda', generator=self.loader_seed)
        self.batches_per_epoch = len(self.sampler) // train_opt['batch_size_per_gpu']
        if self.batches_per_epoch < 1:
            raise OptionsError(f"datasets.train.batch_size_per_gpu: {train_opt['batch_size_per_gpu']} exceeds the "
                               f'{len(self.sampler)} samples each process gets per epoch')
        self.val_sets = {}
        for phase, val_opt in self.opt['datasets'].items():
            if phase.startswith('val'):
                val_opt = dict(val_opt)
                val_opt.setdefault('name', phase)
                self.val_sets[val_opt['name']] = build_dataset(phase, val_opt)
        logger.info(f'Training set: {len(dataset)} samples, {self.batches_per_epoch} batches per epoch per process; '
                    f'validation sets: {", ".join(f"{k} ({len(v)})" for k, v in self.val_sets.items()) or "none"}')

    def batches(self, epoch: int, skip: int) -> Iterator[tuple[int, dict]]:
        """Micro-batches forever, from ``skip`` batches into ``epoch`` (the resume point)."""
        batch_size = self.loader.batch_size
        while True:
            self.sampler.set_epoch(epoch, start=skip * batch_size)
            self.train_set.set_epoch(epoch)
            self.loader_seed.manual_seed(self.seed + epoch)
            order = list(self.sampler) if self.rank_log else []  # the indices the loader reads, in its order
            for i, batch in enumerate(self.loader):
                self.batch_indices = order[i * batch_size:(i + 1) * batch_size]
                yield epoch, batch
            epoch, skip = epoch + 1, 0

    def validate(self, model, current_iter: int) -> dict[str, dict] | DataFault:
        """Every validation set's results, or the DataFault of a frame or lmdb value one of them cannot read (the
        stores raise these types with the key or file named), so that the run stops as for a training sample."""
        results = {}
        for name, dataset in self.val_sets.items():
            try:
                averages = model.validation(dataset, current_iter, self.tb, self.opt['val'].get('save_img', False))
            except (OSError, KeyError, ValueError) as err:
                return DataFault(f'validation set {name} ({type(dataset).__name__}): {describe_error(err)}')
            results[name] = {'averages': averages, 'rows': model.last_validation}  # the model logged them
        return results

    def log_iteration(self, model, current_iter: int, epoch: int, progress: Progress) -> None:
        logs = model.get_current_log()
        lrs = model.get_current_learning_rate()
        logger.info(f"[{self.opt['name']}] epoch {epoch} iter {current_iter}/{progress.total_iter} lr {lrs[0]:.3e} | "
                    f'{progress.line(current_iter)} | ' + ', '.join(f'{k} {v:.4e}' for k, v in logs.items()))
        if self.info.is_main:
            with self.history.open('a') as handle:
                handle.write(json.dumps({'iter': current_iter, 'epoch': epoch, 'lr': lrs, **logs}) + '\n')
            if self.tb is not None:
                for key, value in logs.items():  # basicsr's tags: losses/l_* and other values by name
                    self.tb.add_scalar(f'losses/{key}' if key.startswith('l_') else key, value, current_iter)
                self.tb.add_scalar('lr', lrs[0], current_iter)

    def log_rank(self, model, current_iter: int, epoch: int, samples: list[int]) -> None:
        digest = hashlib.sha256()
        for tensor in unwrap(model.net_g).state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
        with self.rank_log.open('a') as handle:
            handle.write(json.dumps({'iter': current_iter, 'epoch': epoch, 'samples': samples,
                                     'losses': model.get_current_log(), 'weights_sha256': digest.hexdigest()}) + '\n')

    def run(self) -> int:
        opt = self.opt
        self.build_loaders()
        model = build_driven_model(opt, self.info.device)
        start_iter = 0
        if self.state_path is not None:
            state = self.read_state(model)
            model.resume_training(state)
            start_iter = int(state['iter'])
            logger.info(f'Resumed from {self.state_path} at iteration {start_iter}')
        self.open_experiment(start_iter)
        if self.state_path is None and self.info.is_main:
            atomic_write_text(Path(opt['path']['experiments_root']) / 'options.yml', dump_options(opt))
        total_iter = int(self.train_opt['total_iter'])
        accumulate = model.accumulate
        consumed = start_iter * accumulate
        batches = self.batches(consumed // self.batches_per_epoch, consumed % self.batches_per_epoch)
        print_freq = int(self.logger_opt.get('print_freq', 100))
        save_freq = int(self.logger_opt.get('save_checkpoint_freq', 5000))
        val_freq = int((opt.get('val') or {}).get('val_freq', 0) or 0) if self.val_sets else 0
        with StopRequest(announce=self.info.is_main) as stop:
            progress = Progress(start_iter, total_iter)
            logger.info(f'Training {opt["network_g"]["type"]} on {self.info.device} x{self.info.world_size}: '
                        f'iterations {start_iter + 1}..{total_iter}, {accumulate} micro-batch(es) per iteration')
            epoch = consumed // self.batches_per_epoch
            current_iter = start_iter
            if self.val_sets and start_iter == 0 and (opt.get('val') or {}).get('validate_at_start'):
                # the starting point, e.g. a pretrained net or an arch that starts at bicubic
                fault = self.validate(model, 0)
                if isinstance(fault, DataFault):
                    return self.stop_for_data(model, fault, epoch, start_iter, 0, None, start_iter)
            progress.resume()
            saved_at = None
            while current_iter < total_iter:
                current_iter += 1
                samples = []
                for micro in range(accumulate):
                    epoch, batch = next(batches)
                    if any_rank(isinstance(batch, DataFault), self.info.device):
                        return self.stop_for_data(model, batch, epoch, current_iter - 1, micro, saved_at, start_iter)
                    samples += self.batch_indices
                    model.feed_data(batch)
                    model.optimize_parameters(current_iter)
                model.update_learning_rate(current_iter)
                if self.rank_log is not None:
                    self.log_rank(model, current_iter, epoch, samples)
                if current_iter % print_freq == 0 or current_iter == total_iter:
                    self.log_iteration(model, current_iter, epoch, progress)
                progress.pause()
                if current_iter % save_freq == 0:
                    model.save(epoch, current_iter)
                    saved_at = current_iter
                if val_freq and current_iter % val_freq == 0 and current_iter < total_iter:
                    fault = self.validate(model, current_iter)
                    if isinstance(fault, DataFault):
                        return self.stop_for_data(model, fault, epoch, current_iter, 0, saved_at, start_iter)
                if any_rank(stop.signum is not None, self.info.device):
                    if saved_at != current_iter:
                        model.save(epoch, current_iter)
                    logger.warning(f'{self.rank_prefix}Stopped at iteration {current_iter}; resume with --auto_resume')
                    return EXIT_CODES.get(stop.signum, 130)
                progress.resume()
            if saved_at != current_iter:
                model.save(epoch, current_iter)
            results = self.validate(model, current_iter) if self.val_sets else {}
            if isinstance(results, DataFault):
                return self.stop_for_data(model, results, epoch, current_iter, 0, current_iter, start_iter)
            self.summarise(results, progress, current_iter)
            return 0

    def read_state(self, model) -> dict:
        """The training state to resume from, checked against the network before anything is restored."""
        try:
            state = torch.load(self.state_path, map_location='cpu', weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
            raise OptionsError(f'cannot read the training state {self.state_path}: {describe_error(err)}') from None
        if not isinstance(state, dict) or 'iter' not in state:
            raise OptionsError(f'{self.state_path} is not a training state (no iteration in it)')
        params = state.get('params')  # vsrkit's models keep the weights in the state (basicsr's: beside it)
        mismatches = []
        if isinstance(params, dict) and hasattr(model, 'net_g'):
            mismatches = check_state_dict_fits(unwrap(model.net_g), params)
        if mismatches:
            raise OptionsError(f"training state {self.state_path} does not fit network_g "
                               f"({self.opt['network_g']['type']}): {'; '.join(mismatches)}")
        return state

    @property
    def rank_prefix(self) -> str:
        return f'rank {self.info.rank}: ' if self.info.world_size > 1 else ''

    def open_experiment(self, start_iter: int) -> None:
        """Every check has passed (datasets and network built, the state loaded): now rank 0 prepares the experiment
        folder (archiving an earlier one when starting afresh), and logging to files starts."""
        if self.info.is_main:
            self.lock = prepare_experiment_dirs(self.opt, self.lock, resuming=self.state_path is not None)
            if self.state_path is not None:
                truncate_history(self.history, start_iter)
            attach_log_file(self.opt)
            if self.logger_opt.get('use_tb_logger', True):
                events = Path(self.opt['path']['tb_logger'])
                if self.state_path is None:
                    archived = archive_event_files(events)
                    if archived is not None:
                        logger.info(f'Existing TensorBoard folder moved to {archived}')
                # resuming: TensorBoard hides what the stopped run logged after the resumed state's iteration
                self.tb = SummaryWriter(events, purge_step=None if self.state_path is None else start_iter + 1)
        barrier()

    def stop_for_data(self, model, fault: object, epoch: int, last_iter: int, micro: int, saved_at: int | None,
                      start_iter: int) -> int:
        """A sample could not be read (on this or another process): save the last finished iteration, stop with one
        line per process."""
        if last_iter > start_iter and saved_at != last_iter:
            # the micro-batches of the unfinished iteration stepped no optimizer: the weights are last_iter's, and the
            # micro-batch count goes back so that accumulation lines up on resume
            model.micro_step -= micro
            model.save(epoch, last_iter)
            saved = f'state of iteration {last_iter} saved'
        else:
            saved = (f'iteration {last_iter} is already saved' if last_iter > start_iter or self.state_path
                     else 'no iteration finished, nothing to save')
        what = (f'data error: {fault.message}' if isinstance(fault, DataFault)
                else 'stopped: another process met a data error')
        logger.error(f'{self.rank_prefix}{what}; {saved}; fix the data and resume with --auto_resume')
        return DATA_FAULT_EXIT

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        close_logging()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def summarise(self, results: dict, progress: Progress, current_iter: int) -> None:
        if not self.info.is_main:
            return
        minutes = progress.train_seconds / 60
        logger.info(f'Training finished: iteration {current_iter}, {minutes:.1f} min of training '
                    f'({progress.rate(current_iter):.2f} it/s); weights in {self.opt["path"]["models"]}')
        for name, result in results.items():
            table = validation_table(result['rows'])
            logger.info(f'Validation table ({name}, iteration {current_iter}):\n{table}')


def main(argv: list[str] | None = None, root: str | Path | None = None) -> int:
    retain_freed_memory()
    args = parse_args(argv)
    root = Path(root) if root is not None else default_root()
    try:
        opt = load_options(args.opt, root=root, overrides=args.force_yml, debug=args.debug)
        check_options(opt)
        if args.check_only:
            check_not_in_use(opt['path']['experiments_root'])
            for built in ensure_sample_data(opt):
                print(f'Created sample data in {built}')
            check_training_set_fits(opt)
            print(f'{args.opt}: options OK')
            return 0
        check_training_set_fits(opt)  # before the process group and any worker start
        info = init_distributed(opt.get('num_gpu', 'auto'))
    except (OptionsError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    opt['device'] = str(info.device)
    trainer = None
    try:
        trainer = Trainer(opt, info, args.auto_resume)
        return trainer.run()
    except OptionsError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    finally:
        if trainer is not None:
            trainer.close()
        cleanup()
