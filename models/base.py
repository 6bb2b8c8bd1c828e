"""The training machinery shared by every vsrkit model type, with BasicSR's model interface.

A model type (``ImageSRModel``, the recurrent VSR model, ...) subclasses ``TrainableModel`` and supplies
``compute_losses`` (forward + losses on the fed batch) and ``validate_sample``. Everything else is here, once:
device placement (CPU or CUDA), DDP, optimizer and scheduler from options, gradient accumulation,
gradient-norm clipping, AMP (bf16 / fp16 + GradScaler on CUDA; bf16 on CPU only when asked), EMA (validated
with the EMA weights), BasicSR-layout checkpoints written atomically, and resumable training states.

The public methods keep BasicSR's names and signatures (feed_data, optimize_parameters, update_learning_rate,
get_current_learning_rate, get_current_log, validation, save, resume_training), so basicsr's own train.py
(``basicsr.train.train_pipeline``) drives these models as vsrkit's loop does. There each of its iterations is
one micro-batch (its ``total_iter`` counts micro-batches), and the model keeps what matters per optimizer step:
the LR schedule advances once per optimizer step (basicsr calls ``update_learning_rate`` before every batch),
``fix_flow``-style options count optimizer steps (``iteration``), every log has the loss terms, validation is
logged in basicsr's format (each metric with its best value and iteration) and to tensorboard as basicsr's
SRModel does, and ``save(-1, -1)`` (basicsr's "latest") writes ``net_g_latest.pth`` and no training state.
"""
from __future__ import annotations

import copy
import logging
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vsrkit.archs import build_network
from vsrkit.losses import build_loss
from vsrkit.archs.loader import load_state, read_state_dict
from vsrkit.models.optim import build_optimizer, build_scheduler
from vsrkit.utils.atomic import atomic_save
from vsrkit.utils.checkpoint import save_safetensors
from vsrkit.utils.precision import autocast_for, parse_dtype
from vsrkit.utils.dist import all_gather_objects, choose_device, get_rank_world

logger = logging.getLogger('vsrkit')
# Validation results go to basicsr's logger, in its format: basicsr's train.py writes its log file through it,
# and vsrkit's loop routes it to its own handlers (engine.train_loop.setup_logging).
validation_logger = logging.getLogger('basicsr')
# logger.save_format: BasicSR's .pth (params, params_ema, network_g) or .safetensors (utils.checkpoint).
SAVE_FORMATS = ('pth', 'safetensors')
LATEST = -1  # basicsr's save(epoch=-1, current_iter=-1): the latest weights, no training state

def unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, DistributedDataParallel) else net


def amp_dtype(train_opt: dict, device: torch.device) -> torch.dtype | None:
    """``train.amp``: a dtype name for CUDA only (e.g. ``fp16``), or {cuda: ..., cpu: ...}; CPU allows bf16."""
    amp = train_opt.get('amp')
    choice = amp.get(device.type) if isinstance(amp, dict) else (amp if device.type == 'cuda' else None)
    return parse_dtype(choice, device, where='train.amp')


class TrainableModel:
    """Base of vsrkit's model types (see module docstring). ``opt`` is the whole options dict."""

    def __init__(self, opt: dict) -> None:
        self.opt = opt
        self.is_train = bool(opt.get('is_train', False))
        self.rank, self.world_size = get_rank_world()
        self.device = torch.device(opt['device']) if 'device' in opt else choose_device(opt.get('num_gpu', 'auto'))
        self.save_format = (opt.get('logger') or {}).get('save_format', 'pth')
        if self.save_format not in SAVE_FORMATS:  # refused before training, not at the first save
            raise ValueError(f'logger.save_format: expected one of {", ".join(SAVE_FORMATS)}, got {self.save_format!r}')
        self.net_g = build_network(opt['network_g'], where='network_g').to(self.device)
        n_params = sum(p.numel() for p in {id(p): p for p in self.net_g.parameters()}.values())
        logger.info(f"Network {opt['network_g']['type']}: {n_params:,} parameters")
        self.load_pretrained()
        self.log_dict: dict[str, float] = {}
        # basicsr's layout: {dataset: {metric: {'better': 'higher' | 'lower', 'val': best value, 'iter': when}}}
        self.best_metric_results: dict[str, dict[str, dict]] = {}
        self.net_g_ema: nn.Module | None = None
        if self.is_train:
            self.init_training_settings()

    # ---------------------------------------------------------------- set-up
    def load_pretrained(self) -> None:
        path = (self.opt.get('path') or {}).get('pretrain_network_g')
        if not path:
            return
        # The generic loader's reading and fitting: the architecture's remap applies (an original's names), a
        # strict load that does not fit is one message naming every missing / unexpected / reshaped key, and a
        # non-strict one (as BasicSR) loads the keys of the network's shapes, e.g. all but the head of a new scale.
        state = read_state_dict(path, self.opt['network_g']['type'], self.opt['path'].get('param_key_g'))
        strict = self.opt['path'].get('strict_load_g', True)
        not_loaded = load_state(self.net_g, state, strict, source=f'path.pretrain_network_g {path}')
        if not_loaded:
            logger.warning(f'{path}: not loaded into network_g (strict_load_g: false): {not_loaded}')
        logger.info(f'Loaded {path} into network_g (strict={strict})')

    def init_training_settings(self) -> None:
        train = self.opt['train']
        self.accumulate = int(train.get('accumulate_grad_batches', 1))
        if self.accumulate < 1:
            raise ValueError(f'train.accumulate_grad_batches: expected >= 1, got {self.accumulate}')
        self.grad_clip_norm = train.get('grad_clip_norm')
        self.amp_dtype = amp_dtype(train, self.device)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp_dtype is torch.float16)
        self.losses = nn.ModuleDict({key[:-len('_opt')]: build_loss(value, where=f'train.{key}').to(self.device)
                                     for key, value in train.items() if key.endswith('_opt') and value})
        self.ema_decay = float(train.get('ema_decay', 0) or 0)
        if self.ema_decay > 0:
            self.net_g_ema = copy.deepcopy(self.net_g).eval().requires_grad_(False)
        self.net_g.train()
        if self.world_size > 1:
            self.net_g = DistributedDataParallel(
                self.net_g, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                find_unused_parameters=bool(train.get('find_unused_parameters', False)))
        self.optimizer = build_optimizer(self.optimizer_param_groups(), train['optim_g'])
        sched = train.get('scheduler')
        self.scheduler = build_scheduler(self.optimizer, sched, int(train.get('warmup_iter', 0) or 0)) if sched else None
        self.micro_step = 0
        self.scheduled_steps = 0  # optimizer steps the LR schedule has advanced for
        self._window_logs: dict[str, float] = {}  # loss sums over the micro-batches of the step in progress
        self._window_count = 0

    def optimizer_param_groups(self) -> list[dict]:
        """Trainable parameters as optimizer param groups; override for per-module learning rates."""
        return [{'params': [p for p in self.net_g.parameters() if p.requires_grad]}]

    # ---------------------------------------------------------------- training
    def feed_data(self, data: dict) -> None:
        self.lq = data['lq'].to(self.device, non_blocking=True)
        if 'gt' in data:
            self.gt = data['gt'].to(self.device, non_blocking=True)

    def autocast(self):
        return autocast_for(self.device, self.amp_dtype)

    def compute_losses(self, current_iter: int) -> dict[str, torch.Tensor]:
        """Forward the fed batch and return named loss terms (summed for backward). Subclasses implement."""
        raise NotImplementedError

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps taken so far (vsrkit's iterations)."""
        return self.micro_step // self.accumulate

    @property
    def iteration(self) -> int:
        """The optimizer step (1-based) the micro-batch in progress belongs to: vsrkit's ``current_iter``, also
        under basicsr's loop, whose ``current_iter`` counts micro-batches."""
        return (self.micro_step - 1) // self.accumulate + 1

    def optimize_parameters(self, current_iter: int) -> None:
        """One micro-batch: forward, backward; steps the optimizer once every ``accumulate_grad_batches`` calls."""
        self.micro_step += 1
        last_micro = self.micro_step % self.accumulate == 0
        sync = self.net_g.no_sync() if isinstance(self.net_g, DistributedDataParallel) and not last_micro else nullcontext()
        with sync:
            with self.autocast():
                terms = self.compute_losses(current_iter)
            total = sum(terms.values())
            if not torch.isfinite(total):
                raise FloatingPointError(f'iteration {current_iter}: loss is {total.item()} ({self._describe(terms)})')
            self.scaler.scale(total / self.accumulate).backward()
        for name, value in terms.items():
            self._window_logs[name] = self._window_logs.get(name, 0.0) + value.item()
        self._window_count += 1
        if last_micro:
            self.scaler.unscale_(self.optimizer)
            logs = self._window_means()
            if self.grad_clip_norm:
                norm = torch.nn.utils.clip_grad_norm_(self.net_g.parameters(), float(self.grad_clip_norm))
                logs['grad_norm'] = float(norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.update_ema()
            self.log_dict, self._window_logs, self._window_count = logs, {}, 0

    def _window_means(self) -> dict[str, float]:
        return {k: v / self._window_count for k, v in self._window_logs.items()} if self._window_count else {}

    @staticmethod
    def _describe(terms: dict[str, torch.Tensor]) -> str:
        return ', '.join(f'{k}={v.item():.4g}' for k, v in terms.items())

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.net_g_ema is None:
            return
        # parameters()/buffers() list a tied tensor once (state_dict() would update it once per alias)
        net = unwrap(self.net_g)
        for ema, live in zip(self.net_g_ema.parameters(), net.parameters()):
            ema.lerp_(live.detach().to(ema.dtype), 1 - self.ema_decay)
        for ema, live in zip(self.net_g_ema.buffers(), net.buffers()):
            ema.copy_(live)

    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        """Advance the LR schedule once for each optimizer step taken since the last call.

        vsrkit's loop calls this after each iteration (one optimizer step). basicsr's loop calls it before every
        micro-batch, so with ``accumulate_grad_batches`` > 1 most calls find no new step and do nothing, and none
        steps the scheduler before the optimizer: the schedule runs at the same pace per optimizer step under both.
        ``warmup_iter`` is basicsr's argument and unused: warm-up is part of the scheduler (models.optim)."""
        if self.scheduler is not None:
            for _ in range(self.optimizer_steps - self.scheduled_steps):
                self.scheduler.step()
        self.scheduled_steps = self.optimizer_steps

    def get_current_learning_rate(self) -> list[float]:
        return [group['lr'] for group in self.optimizer.param_groups]

    def get_current_log(self) -> dict[str, float]:
        """Loss terms of the last optimizer step (means over its micro-batches); before the first step completes,
        the means over the micro-batches so far (basicsr's loop may log after any micro-batch)."""
        return dict(self.log_dict) if self.log_dict else self._window_means()

    # ---------------------------------------------------------------- inference
    @property
    def inference_net(self) -> nn.Module:
        """The network validation and inference use: the EMA weights when EMA is on."""
        return self.net_g_ema if self.net_g_ema is not None else unwrap(self.net_g)

    def validation(self, dataloader, current_iter: int, tb_logger=None, save_img: bool = False) -> dict[str, float]:
        """Score the validation set (sharded over ranks); returns the average metrics and keeps per-sample rows
        in ``self.last_validation`` (a list of dicts, on every rank)."""
        dataset = dataloader.dataset if hasattr(dataloader, 'dataset') else dataloader
        net = self.inference_net
        was_training = net.training
        net.eval()
        rows = []
        with torch.no_grad():
            for index in range(self.rank, len(dataset), self.world_size):
                rows.append(self.validate_sample(dataset[index], current_iter, save_img))
        if was_training:
            net.train()
        rows = sorted((row for part in all_gather_objects(rows) for row in part), key=lambda r: r['name'])
        self.last_validation = rows = self.merge_rows(rows)
        metrics = [k for k in rows[0] if k not in ('name', 'frames')] if rows else []
        averages = {k: float(sum(r[k] for r in rows) / len(rows)) for k in metrics}
        self.log_validation(str((getattr(dataset, 'opt', None) or {}).get('name', 'val')), averages, current_iter,
                            tb_logger)
        return averages

    def merge_rows(self, rows: list[dict]) -> list[dict]:
        """Per-sample rows → the rows averages are taken over (identity; video models merge chunks per clip)."""
        return rows

    def log_validation(self, dataset_name: str, averages: dict[str, float], current_iter: int, tb_logger) -> None:
        """Record the best value of each metric and log as basicsr's SRModel does (same text, same tensorboard
        tags ``metrics/<dataset>/<metric>``); rank 0 only. A metric's ``better: lower`` option is honoured; a
        ``bicubic_<metric>`` column follows its metric's option."""
        if self.rank != 0:
            return
        metric_opts = (self.opt.get('val') or {}).get('metrics') or {}
        best = self.best_metric_results.setdefault(dataset_name, {})
        lines = [f'Validation {dataset_name}']
        for metric, value in averages.items():
            base_metric = metric.removeprefix('bicubic_') if metric not in metric_opts else metric
            higher = (metric_opts.get(base_metric) or {}).get('better', 'higher') == 'higher'
            record = best.setdefault(metric, {'better': 'higher' if higher else 'lower',
                                              'val': float('-inf') if higher else float('inf'), 'iter': -1})
            if (value >= record['val']) if higher else (value <= record['val']):
                record.update(val=value, iter=current_iter)
            lines.append(f"\t # {metric}: {value:.4f}\tBest: {record['val']:.4f} @ {record['iter']} iter")
        validation_logger.info('\n'.join(lines) + '\n')
        if tb_logger is not None:
            for metric, value in averages.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}', value, current_iter)

    def validate_sample(self, sample: dict, current_iter: int, save_img: bool) -> dict[str, Any]:
        """Score one validation sample; returns {'name': ..., metric: value, ...}. Subclasses implement."""
        raise NotImplementedError

    # ---------------------------------------------------------------- checkpoints
    def network_files(self, current_iter: int | str) -> list[Path]:
        folder = Path(self.opt['path']['models'])
        suffix = f'.{self.save_format}'
        if current_iter == LATEST:
            return [folder / f'net_g_latest{suffix}']
        return [folder / f'net_g_{current_iter}{suffix}', folder / f'net_g_latest{suffix}']

    def train_patch_size(self) -> int | None:
        """The LR patch side the network trains on: ``datasets.train.gt_size`` / ``scale``, None when unknown."""
        gt_size = ((self.opt.get('datasets') or {}).get('train') or {}).get('gt_size')
        scale = self.opt.get('scale') or 1
        return gt_size // scale if isinstance(gt_size, int) and isinstance(scale, int) else None

    def save(self, epoch: int, current_iter: int, extra_state: dict | None = None) -> None:
        """Write net_g_<iter>.pth, net_g_latest.pth and training_states/<iter>.state (rank 0, atomically);
        ``current_iter`` -1 (basicsr's "latest") writes net_g_latest.pth only. ``logger.keep_training_states: N``
        then removes all but the newest N states (default: keep all, as basicsr).

        Collective: every rank must call it (each rank's RNG states are gathered into the state file)."""
        rng_states = all_gather_objects(capture_rng_state())
        if self.rank != 0:
            return
        weights = {'params': unwrap(self.net_g).state_dict()}
        if self.net_g_ema is not None:
            weights['params_ema'] = self.net_g_ema.state_dict()
        weights['network_g'] = dict(self.opt['network_g'])
        train_size = self.train_patch_size()
        if train_size is not None:  # inference tiles global-attention networks near the size they learnt on
            weights['train_size'] = train_size
        for path in self.network_files(current_iter):
            if self.save_format == 'safetensors':  # one network (the EMA one when kept, as inference picks)
                save_safetensors(weights.get('params_ema', weights['params']), path, weights['network_g'],
                                 train_size)
            else:
                atomic_save(weights, path)
        if current_iter == LATEST:
            return
        state = {'epoch': epoch, 'iter': current_iter, 'micro_step': self.micro_step,
                 'scheduled_steps': self.scheduled_steps,
                 'optimizers': [self.optimizer.state_dict()],
                 'schedulers': [self.scheduler.state_dict()] if self.scheduler is not None else [],
                 'scaler': self.scaler.state_dict(), 'rng': rng_states, 'world_size': self.world_size,
                 'params': weights['params'], 'params_ema': weights.get('params_ema'), **(extra_state or {})}
        folder = Path(self.opt['path']['training_states'])
        atomic_save(state, folder / f'{current_iter}.state')
        keep = (self.opt.get('logger') or {}).get('keep_training_states')
        if keep is not None:
            prune_training_states(folder.glob('*.state'), int(keep))

    def resume_training(self, state: dict) -> None:
        """Restore weights, optimizer, scheduler, scaler and this rank's RNG states from a training state."""
        unwrap(self.net_g).load_state_dict(state['params'])
        if self.net_g_ema is not None:
            self.net_g_ema.load_state_dict(state['params_ema'] if state.get('params_ema') else state['params'])
        self.optimizer.load_state_dict(state['optimizers'][0])
        if self.scheduler is not None and state['schedulers']:
            self.scheduler.load_state_dict(state['schedulers'][0])
        self.scaler.load_state_dict(state['scaler'])
        self.micro_step = state.get('micro_step', 0)
        self.scheduled_steps = state.get('scheduled_steps', self.optimizer_steps)
        rng = state.get('rng') or []
        if len(rng) == self.world_size:
            restore_rng_state(rng[self.rank])
        elif rng:
            logger.warning(f'resume: the state was saved with {len(rng)} processes, now {self.world_size}; '
                           'random streams restart from the seed (the run continues, not bit-exactly)')


def prune_training_states(states: Iterable[Path], keep: int) -> list[Path]:
    """Delete all but the ``keep`` (>= 1) highest-iteration ``<iter>.state`` files; returns the deleted ones.
    Called only after a state was written, so the newest state on disk is always a complete one."""
    if keep < 1:
        raise ValueError(f'logger.keep_training_states: expected >= 1, got {keep}')
    numbered = sorted((p for p in states if p.stem.isdigit()), key=lambda p: int(p.stem))
    old = numbered[:-keep]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def capture_rng_state() -> dict:
    """RNG states as plain tensors/lists, so training states load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {'python': random.getstate(), 'numpy': (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                   cached), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])

