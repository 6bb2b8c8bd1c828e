"""Optimizers and learning-rate schedulers from options.

BasicSR 1.4.2 builds only Adam and its ``CosineAnnealingRestartLR`` raises a TypeError once the iteration
passes the sum of its periods. Here any ``torch.optim`` optimizer is built by class name, schedulers are
basicsr's (with that crash fixed: the LR holds at ``eta_min``) or torch's by class name, and a linear
warm-up (``warmup_iter``) can precede any of them. Schedulers step once per optimizer step (iteration).
"""
from __future__ import annotations

import inspect
from typing import Iterable

import torch
from torch.optim import lr_scheduler as torch_sched

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.models.lr_scheduler import CosineAnnealingRestartLR as _BasicsrCosineRestart
from basicsr.models.lr_scheduler import MultiStepRestartLR
from vsrkit.utils.signature import OptionsError, signature_problem


class CosineAnnealingRestartLR(_BasicsrCosineRestart):
    """basicsr's cosine annealing with restarts; past the last period the LR stays at ``eta_min``."""

    def get_lr(self) -> list[float]:
        if self.last_epoch >= self.cumulative_period[-1]:
            return [self.eta_min for _ in self.base_lrs]
        return super().get_lr()


# Schedulers that need more than the optimizer and their own numeric options are excluded.
_TORCH_EXCLUDED = {'LRScheduler', '_LRScheduler', 'LambdaLR', 'MultiplicativeLR', 'SequentialLR', 'ChainedScheduler',
                   'ReduceLROnPlateau'}


def optimizer_names() -> list[str]:
    return sorted(name for name, obj in vars(torch.optim).items()
                  if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer)


def _scheduler_classes() -> dict[str, type]:
    classes = {name: obj for name, obj in vars(torch_sched).items()
               if inspect.isclass(obj) and issubclass(obj, torch_sched.LRScheduler) and name not in _TORCH_EXCLUDED}
    classes['MultiStepRestartLR'] = MultiStepRestartLR
    classes['CosineAnnealingRestartLR'] = CosineAnnealingRestartLR
    return classes


def scheduler_names() -> list[str]:
    return sorted(_scheduler_classes())


def _construct(cls: type, first_arg: object, kwargs: dict, where: str):
    problem = signature_problem(cls, kwargs, positional=(first_arg,))
    if problem:
        raise OptionsError(f'{where}: {problem}')
    return cls(first_arg, **kwargs)


def build_optimizer(params: Iterable, opt: dict, where: str = 'train.optim_g') -> torch.optim.Optimizer:
    """``opt`` = {'type': 'AdamW', 'lr': 1e-4, ...}: any torch.optim optimizer with its own keyword arguments."""
    kwargs = dict(opt)
    name = kwargs.pop('type')
    cls = getattr(torch.optim, name, None)
    if name not in optimizer_names():
        raise OptionsError(f"{where}.type: unknown optimizer '{name}'; torch.optim has {optimizer_names()}")
    if 'betas' in kwargs:
        kwargs['betas'] = tuple(kwargs['betas'])
    return _construct(cls, params, kwargs, where)


def build_scheduler(optimizer: torch.optim.Optimizer, opt: dict, warmup_iter: int = 0,
                    where: str = 'train.scheduler') -> torch_sched.LRScheduler:
    """``opt`` = {'type': 'CosineAnnealingLR', 'T_max': 1000, ...}; ``warmup_iter`` > 0 prepends a linear ramp."""
    kwargs = dict(opt)
    name = kwargs.pop('type')
    classes = _scheduler_classes()
    if name not in classes:
        raise OptionsError(f"{where}.type: unknown scheduler '{name}'; known: {sorted(classes)}")
    main = _construct(classes[name], optimizer, kwargs, where)
    if warmup_iter <= 0:
        return main
    ramp = torch_sched.LinearLR(optimizer, start_factor=1.0 / (warmup_iter + 1), end_factor=1.0,
                                total_iters=warmup_iter)
    return torch_sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup_iter])
