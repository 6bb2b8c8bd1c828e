"""The training machinery shared by every vsrkit model type, with BasicSR's model interface.

A model type (``ImageSRModel``, the recurrent VSR model, ...) subclasses ``TrainableModel`` and supplies
``compute_losses`` (forward + losses on the fed batch) and ``validate_sample``. Everything else is here, once:
device placement (CPU or CUDA), DDP, optimizer and scheduler from options, gradient accumulation,
gradient-norm clipping, AMP (bf16 / fp16 + GradScaler on CUDA; bf16 on CPU only when asked), EMA (validated
with the EMA weights), BasicSR-layout checkpoints written atomically, and resumable training states.

The public methods keep BasicSR's names and signatures (feed_data, optimize_parameters, update_learning_rate,
get_current_learning_rate, get_current_log, validation, save, resume_training), so basicsr's own train.py
can drive these models too; there each of its iterations is one micro-batch.
"""
from __future__ import annotations

import copy
import logging
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import vsrkit.archs  # noqa: F401  (model types build networks and losses by name from these registries)
import vsrkit.losses  # noqa: F401
from vsrkit.models.optim import build_optimizer, build_scheduler
from vsrkit.utils.atomic import atomic_save
from vsrkit.utils.checkpoint import extract_state_dict, load_file
from vsrkit.utils.precision import autocast_for, parse_dtype
from vsrkit.utils.dist import all_gather_objects, choose_device, get_rank_world
from vsrkit.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY

logger = logging.getLogger('vsrkit')

def build_network(opt: dict) -> nn.Module:
    kwargs = dict(opt)
    return ARCH_REGISTRY.get(kwargs.pop('type'))(**kwargs)


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
        self.net_g = build_network(opt['network_g']).to(self.device)
        n_params = sum(p.numel() for p in {id(p): p for p in self.net_g.parameters()}.values())
        logger.info(f"Network {opt['network_g']['type']}: {n_params:,} parameters")
        self.load_pretrained()
        self.log_dict: dict[str, float] = {}
        self.net_g_ema: nn.Module | None = None
        if self.is_train:
            self.init_training_settings()

    # ---------------------------------------------------------------- set-up
    def load_pretrained(self) -> None:
        path = (self.opt.get('path') or {}).get('pretrain_network_g')
        if not path:
            return
        param_key = self.opt['path'].get('param_key_g')
        state = extract_state_dict(load_file(path), param_key, source=str(path))
        strict = self.opt['path'].get('strict_load_g', True)
        if not strict:  # as BasicSR: a non-strict load also skips tensors whose shapes differ (e.g. a new scale)
            own = self.net_g.state_dict()
            skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
            state = {k: v for k, v in state.items() if k not in skipped}
            if skipped:
                logger.warning(f'{path}: not loading {skipped} (shapes differ from network_g)')
        missing, unexpected = self.net_g.load_state_dict(state, strict=strict)
        logger.info(f'Loaded {path} into network_g (strict={strict}; missing {list(missing)}, '
                    f'unexpected {list(unexpected)})')

    def init_training_settings(self) -> None:
        train = self.opt['train']
        self.accumulate = int(train.get('accumulate_grad_batches', 1))
        if self.accumulate < 1:
            raise ValueError(f'train.accumulate_grad_batches: expected >= 1, got {self.accumulate}')
        self.grad_clip_norm = train.get('grad_clip_norm')
        self.amp_dtype = amp_dtype(train, self.device)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp_dtype is torch.float16)
        self.losses = nn.ModuleDict({key[:-len('_opt')]: self.build_loss(value)
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
        self._window_logs: dict[str, float] = {}

    def build_loss(self, loss_opt: dict) -> nn.Module:
        kwargs = dict(loss_opt)
        return LOSS_REGISTRY.get(kwargs.pop('type'))(**kwargs).to(self.device)

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
            self._window_logs[name] = self._window_logs.get(name, 0.0) + value.item() / self.accumulate
        if last_micro:
            self.scaler.unscale_(self.optimizer)
            if self.grad_clip_norm:
                norm = torch.nn.utils.clip_grad_norm_(self.net_g.parameters(), float(self.grad_clip_norm))
                self._window_logs['grad_norm'] = float(norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.update_ema()
            self.log_dict, self._window_logs = self._window_logs, {}

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
        """Advance the scheduler by one optimizer step (warm-up is part of the scheduler, see models.optim)."""
        if self.scheduler is not None:
            self.scheduler.step()

    def get_current_learning_rate(self) -> list[float]:
        return [group['lr'] for group in self.optimizer.param_groups]

    def get_current_log(self) -> dict[str, float]:
        return dict(self.log_dict)

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
        self.last_validation = rows
        metrics = [k for k in rows[0] if k != 'name'] if rows else []
        averages = {k: float(sum(r[k] for r in rows) / len(rows)) for k in metrics}
        if tb_logger is not None:
            name = getattr(dataset, 'opt', {}).get('name', 'val')
            for key, value in averages.items():
                tb_logger.add_scalar(f'metrics/{name}/{key}', value, current_iter)
        return averages

    def validate_sample(self, sample: dict, current_iter: int, save_img: bool) -> dict[str, Any]:
        """Score one validation sample; returns {'name': ..., metric: value, ...}. Subclasses implement."""
        raise NotImplementedError

    # ---------------------------------------------------------------- checkpoints
    def network_files(self, current_iter: int | str) -> list[Path]:
        folder = Path(self.opt['path']['models'])
        return [folder / f'net_g_{current_iter}.pth', folder / 'net_g_latest.pth']

    def save(self, epoch: int, current_iter: int, extra_state: dict | None = None) -> None:
        """Write net_g_<iter>.pth, net_g_latest.pth and training_states/<iter>.state (rank 0, atomically).

        Collective: every rank must call it (each rank's RNG states are gathered into the state file)."""
        rng_states = all_gather_objects(capture_rng_state())
        if self.rank != 0:
            return
        weights = {'params': unwrap(self.net_g).state_dict()}
        if self.net_g_ema is not None:
            weights['params_ema'] = self.net_g_ema.state_dict()
        weights['network_g'] = dict(self.opt['network_g'])
        for path in self.network_files(current_iter):
            atomic_save(weights, path)
        state = {'epoch': epoch, 'iter': current_iter, 'micro_step': self.micro_step,
                 'optimizers': [self.optimizer.state_dict()],
                 'schedulers': [self.scheduler.state_dict()] if self.scheduler is not None else [],
                 'scaler': self.scaler.state_dict(), 'rng': rng_states, 'world_size': self.world_size,
                 'params': weights['params'], 'params_ema': weights.get('params_ema'), **(extra_state or {})}
        atomic_save(state, Path(self.opt['path']['training_states']) / f'{current_iter}.state')

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
        rng = state.get('rng') or []
        if len(rng) == self.world_size:
            restore_rng_state(rng[self.rank])
        elif rng:
            logger.warning(f'resume: the state was saved with {len(rng)} processes, now {self.world_size}; '
                           'random streams restart from the seed (the run continues, not bit-exactly)')


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

