"""vsrkit's training loop driving basicsr's own image model types (SRModel, SwinIRModel, SRGANModel, ESRGANModel).

basicsr's models expect what basicsr's option parser and loop give them: ``opt['dist']``, ``opt['rank']``,
``opt['world_size']`` and an integer ``num_gpu`` (without them: ``KeyError: 'dist'``); networks wrapped in DDP
with a CUDA device id; the LR updated *before* each iteration's batch; validation from a DataLoader.
``BasicsrModelDriver`` supplies those (DDP with gloo on CPU too) and presents the interface vsrkit's loop uses
(``accumulate``, ``validation`` returning the averages, resume from a training state plus the saved weights).

What cannot be driven is refused at the options check (``basicsr_model_problems``), one line per problem naming
the vsrkit alternative: basicsr's video/Real-ESRGAN/face types (vsrkit's ``RecurrentVSRModel`` or
``ImageSRModel``, or basicsr's own train.py), and options these types do not have (gradient accumulation, AMP,
clipping, optimizers other than Adam, torch schedulers, loss keys they do not read) or losses that download
weights at run time (basicsr's ``PerceptualLoss`` fetches VGG19).
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
import basicsr.models  # noqa: F401  (registers basicsr's model types)
import vsrkit.models
from vsrkit.models.base import prune_training_states
from vsrkit.utils.atomic import atomic_write
from vsrkit.utils.dist import get_rank_world
from vsrkit.utils.registry import MODEL_REGISTRY

# basicsr model type -> the train.<name>_opt losses it reads
DRIVEN = {'SRModel': ('pixel_opt', 'perceptual_opt'), 'SwinIRModel': ('pixel_opt', 'perceptual_opt'),
          'SRGANModel': ('pixel_opt', 'ldl_opt', 'perceptual_opt', 'gan_opt'),
          'ESRGANModel': ('pixel_opt', 'ldl_opt', 'perceptual_opt', 'gan_opt')}
VSRKIT_EQUIVALENTS = {'VideoBaseModel': 'RecurrentVSRModel', 'VideoRecurrentModel': 'RecurrentVSRModel',
                      'EDVRModel': 'RecurrentVSRModel', 'VideoGANModel': 'RecurrentVSRModel',
                      'VideoRecurrentGANModel': 'RecurrentVSRModel', 'RealESRNetModel': 'ImageSRModel',
                      'RealESRGANModel': 'ImageSRModel'}
BASICSR_SCHEDULERS = ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR')  # its setup_schedulers
DOWNLOADING_LOSSES = {'PerceptualLoss': 'VGG19 weights (torchvision)'}
VSRKIT_ONLY_TRAIN_KEYS = {'accumulate_grad_batches': 'gradient accumulation', 'amp': 'AMP',
                          'grad_clip_norm': 'gradient clipping'}


def is_basicsr_model(name: object) -> bool:
    cls = MODEL_REGISTRY._obj_map.get(name) if isinstance(name, str) else None
    return cls is not None and cls.__module__.startswith('basicsr.')


def basicsr_model_problems(opt: dict) -> list[str]:
    """One line per reason vsrkit's loop cannot drive ``opt``'s basicsr model type; [] for vsrkit's types."""
    name = opt.get('model_type')
    if not is_basicsr_model(name):
        return []
    if name not in DRIVEN:
        equivalent = VSRKIT_EQUIVALENTS.get(name)
        instead = f"use vsrkit's {equivalent}" if equivalent else "train it with basicsr's own train.py"
        return [f"model_type: basicsr's {name} cannot be driven by vsrkit's loop (it drives "
                f"{', '.join(DRIVEN)}); {instead}"]
    train = opt.get('train') or {}
    instead = "; vsrkit's ImageSRModel has it"
    problems = []
    for key, what in VSRKIT_ONLY_TRAIN_KEYS.items():
        off = (None, 1) if key == 'accumulate_grad_batches' else (None, False, 0)
        if train.get(key) not in off:
            problems.append(f"train.{key}: basicsr's {name} has no {what}{instead}")
    for key in ('optim_g', 'optim_d'):
        kind = (train.get(key) or {}).get('type')
        if kind is not None and kind != 'Adam':
            problems.append(f"train.{key}.type: basicsr's {name} builds only Adam, got {kind}{instead}")
    scheduler = (train.get('scheduler') or {}).get('type')
    if scheduler not in BASICSR_SCHEDULERS:
        problems.append(f"train.scheduler.type: basicsr's {name} needs one of {', '.join(BASICSR_SCHEDULERS)}, "
                        f'got {scheduler}{instead}')
    for key, value in train.items():
        if key.endswith('_opt') and value:
            if key not in DRIVEN[name]:
                problems.append(f"train.{key}: basicsr's {name} does not read it (it reads "
                                f"{', '.join(DRIVEN[name])}); vsrkit's ImageSRModel applies every <name>_opt")
            elif isinstance(value, dict) and value.get('type') in DOWNLOADING_LOSSES:
                problems.append(f"train.{key}: {value['type']} downloads {DOWNLOADING_LOSSES[value['type']]} at run "
                                'time; vsrkit runs nothing that downloads')
    return problems


class BasicsrModelDriver:
    """A basicsr image model with the interface of vsrkit's model types (see module docstring)."""

    accumulate = 1  # basicsr's models step their optimizers on every batch
    micro_step = 0  # no micro-batches to roll back when a sample fails: every batch is a whole iteration

    def __init__(self, opt: dict, device: torch.device) -> None:
        self.opt = opt
        self.rank, world_size = get_rank_world()
        # basicsr pops the 'type' of its optimizer and scheduler options: it gets its own copy
        self.basicsr_opt = copy.deepcopy(opt)
        self.basicsr_opt.update(dist=False, rank=self.rank, world_size=world_size,
                                num_gpu=int(device.type == 'cuda'))
        self.model = MODEL_REGISTRY.get(opt['model_type'])(self.basicsr_opt)
        if world_size > 1:  # basicsr's own DDP wrapping passes a CUDA device id; on CPU (gloo) it must not
            for attr in ('net_g', 'net_d'):
                net = getattr(self.model, attr, None)
                if net is not None:
                    setattr(self.model, attr, DistributedDataParallel(
                        net, device_ids=[device.index] if device.type == 'cuda' else None,
                        find_unused_parameters=bool(opt.get('find_unused_parameters', False))))
        self.basicsr_opt['dist'] = world_size > 1  # from here on: rank-0 validation, losses averaged over ranks
        self.warmup_iter = int(opt['train'].get('warmup_iter', -1) or -1)
        self.last_validation: list[dict] = []

    @property
    def net_g(self) -> torch.nn.Module:
        return self.model.net_g

    def feed_data(self, data: dict) -> None:
        self.model.feed_data(data)

    def optimize_parameters(self, current_iter: int) -> None:
        # basicsr's order: an iteration's LR (and warm-up) is set before its batch
        self.model.update_learning_rate(current_iter, warmup_iter=self.warmup_iter)
        self.model.optimize_parameters(current_iter)

    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        """Nothing: done before the batch, in ``optimize_parameters``, as basicsr's loop does."""

    def get_current_learning_rate(self) -> list[float]:
        return self.model.get_current_learning_rate()

    def get_current_log(self) -> dict[str, float]:
        return dict(self.model.get_current_log())

    def validation(self, dataset: Dataset, current_iter: int, tb_logger=None, save_img: bool = False
                   ) -> dict[str, float]:
        """basicsr's validation (it logs and writes tensorboard itself) over a batch-size-1 DataLoader; returns
        the averages on rank 0 ({} elsewhere). basicsr keeps no per-image rows: one row per dataset."""
        self.model.validation(DataLoader(dataset, batch_size=1, shuffle=False), current_iter, tb_logger, save_img)
        results = getattr(self.model, 'metric_results', {}) if self.rank == 0 else {}
        averages = {metric: float(value) for metric, value in results.items()}
        self.last_validation = [{'name': dataset.opt.get('name', 'val'), **averages}] if averages else []
        return averages

    def save(self, epoch: int, current_iter: int) -> None:
        with _atomic_torch_saves():
            self.model.save(epoch, current_iter)
        keep = (self.opt.get('logger') or {}).get('keep_training_states')
        if keep is not None and self.rank == 0:
            prune_training_states(Path(self.opt['path']['training_states']).glob('*.state'), int(keep))

    def resume_training(self, state: dict) -> None:
        """basicsr's states hold optimizers and schedulers only; the weights are the models/ files of that
        iteration (as basicsr's check_resume points pretrain_network_* at them)."""
        folder = Path(self.opt['path']['models'])
        for key in self.opt:
            if key.startswith('network_'):
                label = key[len('network_'):]
                self.model.load_network(getattr(self.model, f'net_{label}'),
                                        str(folder / f"net_{label}_{state['iter']}.pth"), True, 'params')
        if hasattr(self.model, 'net_g_ema'):
            self.model.load_network(self.model.net_g_ema, str(folder / f"net_g_{state['iter']}.pth"), True,
                                    'params_ema')
        self.model.resume_training(state)


@contextmanager
def _atomic_torch_saves() -> Iterator[None]:
    """For the duration, ``torch.save`` to a path writes atomically (:func:`vsrkit.utils.atomic.atomic_write`).

    basicsr's ``save_network`` / ``save_training_state`` call ``torch.save`` on the final path: a kill or a full
    disk mid-write leaves a truncated ``net_g_<iter>.pth`` or ``<iter>.state`` (basicsr logs the error and goes on),
    which ``--auto_resume`` would then pick. The swap is global but brief: the driver's ``save`` runs on the main
    thread, between iterations."""
    save = torch.save

    def atomic(obj: object, f: object, *args, **kwargs) -> None:
        if isinstance(f, (str, os.PathLike)):
            atomic_write(f, lambda handle: save(obj, handle, *args, **kwargs))
        else:
            save(obj, f, *args, **kwargs)

    torch.save = atomic
    try:
        yield
    finally:
        torch.save = save


def build_driven_model(opt: dict, device: torch.device):
    """The model ``opt['model_type']`` names: vsrkit's types as they are, basicsr's through the driver."""
    if is_basicsr_model(opt['model_type']):
        return BasicsrModelDriver(opt, device)
    return vsrkit.models.build_model(opt)
