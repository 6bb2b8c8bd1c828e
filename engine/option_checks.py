"""Check an options dict against the registries before any process or worker starts.

Every problem found is reported in one ``OptionsError`` listing the YAML key path, the offending value and
what was expected (for an unknown ``type:``: the registered names and the closest match), so a typo costs
one run of ``dist_train.sh`` and no traceback wall from N workers.

Checked before anything is written: names against the registries, constructor options against signatures, each
dataset's required options (declared by the dataset class as ``required_options`` / ``required_train_options``;
basicsr's own classes from :data:`BASICSR_REQUIRED`), that data roots exist (under ``datasets/sample/`` only what
the sample builder makes counts as present), that pretrain and resume files exist, and that a pretrain
checkpoint fits ``network_g`` (keys and shapes against the network built on the meta device).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import torch

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
# every registry populated: basicsr's and vsrkit's archs, datasets, losses, metrics and model types
import basicsr.archs  # noqa: F401
import basicsr.data  # noqa: F401
import basicsr.losses  # noqa: F401
import basicsr.metrics  # noqa: F401
import basicsr.models  # noqa: F401
import vsrkit.archs  # noqa: F401
import vsrkit.losses  # noqa: F401
import vsrkit.models  # noqa: F401
from vsrkit.archs.loader import check_state_dict_fits, read_state_dict
from vsrkit.data import sample_data
from vsrkit.models.base import build_network
from vsrkit.models.basicsr_driver import basicsr_model_problems
from vsrkit.models.optim import optimizer_names, scheduler_names
from vsrkit.utils.signature import OptionsError, signature_problem
from vsrkit.utils.registry import (ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY,
                                   unknown_name_message)

DATAROOT_KEYS = ('dataroot_gt', 'dataroot_lq', 'meta_info_file')
SCALE_KEYS = ('scale', 'upscale')

# basicsr's dataset classes read their options as opt['key'] and declare nothing: the keys each reads without a
# default, from basicsr 1.4.2's source, as (always, in the train phase too). vsrkit's classes declare their own.
_BASICSR_VIDEO_TRAIN = ('dataroot_gt', 'dataroot_lq', 'meta_info_file', 'io_backend', 'num_frame', 'scale', 'gt_size',
                        'use_hflip', 'use_rot')
BASICSR_REQUIRED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    'PairedImageDataset': (('dataroot_gt', 'dataroot_lq', 'io_backend', 'scale'), ('gt_size', 'use_hflip', 'use_rot')),
    'SingleImageDataset': (('dataroot_lq', 'io_backend'), ()),
    'REDSDataset': (_BASICSR_VIDEO_TRAIN + ('val_partition', 'interval_list', 'random_reverse'), ()),
    'REDSRecurrentDataset': (_BASICSR_VIDEO_TRAIN + ('val_partition', 'test_mode'), ()),
    'Vimeo90KDataset': (_BASICSR_VIDEO_TRAIN + ('random_reverse',), ()),
    'Vimeo90KRecurrentDataset': (_BASICSR_VIDEO_TRAIN + ('random_reverse', 'flip_sequence'), ()),
    'VideoTestDataset': (('dataroot_gt', 'dataroot_lq', 'io_backend', 'cache_data', 'name', 'num_frame', 'padding'), ()),
    'VideoRecurrentTestDataset': (('dataroot_gt', 'dataroot_lq', 'io_backend', 'cache_data', 'name'), ()),
}


def required_dataset_options(name: str, train: bool) -> tuple[str, ...]:
    """The options a dataset type cannot do without (see :data:`BASICSR_REQUIRED`); () when it declares none."""
    cls = DATASET_REGISTRY.get(name)
    if hasattr(cls, 'required_options'):
        always, in_train = cls.required_options, getattr(cls, 'required_train_options', ())
    else:
        always, in_train = BASICSR_REQUIRED.get(name, ((), ()))
    return tuple(always) + (tuple(in_train) if train else ())


def _build_on_meta(network_opt: dict) -> torch.nn.Module:
    """``network_g`` without allocating its weights (meta tensors: shapes only); on the CPU for an architecture
    whose constructor computes with its tensors."""
    try:
        with torch.device('meta'):
            return build_network(network_opt)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return build_network(network_opt)


class _Checker:
    def __init__(self, opt: dict, sample_builder_for: Callable[[str], object | None]) -> None:
        self.opt = opt
        self.sample_builder_for = sample_builder_for
        self.problems: list[str] = []

    def require(self, node: object, key: str, where: str, expected: str) -> object:
        if not isinstance(node, dict) or node.get(key) is None:
            self.problems.append(f'{where}.{key}: missing; expected {expected}'.lstrip('.'))
            return None
        return node[key]

    def typed(self, node: object, where: str, registry, kind: str, signature_check: bool) -> None:
        name = self.require(node, 'type', where, f'the name of a registered {kind}')
        if name is None:
            return
        if name not in registry:
            self.problems.append(unknown_name_message(f'{where}.type', kind, name, registry.keys()))
        elif signature_check:
            kwargs = {k: v for k, v in node.items() if k != 'type'}
            problem = signature_problem(registry.get(name), kwargs)
            if problem:
                self.problems.append(f'{where}: {problem}')

    def check(self) -> list[str]:
        opt = self.opt
        self.require(opt, 'name', '', 'an experiment name')
        model_type = self.require(opt, 'model_type', '', 'a registered model type')
        if model_type is not None and model_type not in MODEL_REGISTRY:
            self.problems.append(unknown_name_message('model_type', 'model type', model_type, MODEL_REGISTRY.keys()))
        self.problems.extend(basicsr_model_problems(opt))  # basicsr's own types: driven, or refused here
        if self.require(opt, 'network_g', '', 'a mapping with type: and the architecture options') is not None:
            self.typed(opt['network_g'], 'network_g', ARCH_REGISTRY, 'architecture', signature_check=True)
        self.check_datasets()
        if opt.get('is_train'):
            self.check_train()
        self.check_metrics()
        self.check_scale()
        self.check_files()
        keep = (opt.get('logger') or {}).get('keep_training_states')
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
            self.problems.append(f'logger.keep_training_states: {keep!r} is not a positive integer (the number of newest '
                                 'training states to keep; leave it out to keep all)')
        return self.problems

    def check_datasets(self) -> None:
        datasets = self.opt.get('datasets') or {}
        if self.opt.get('is_train') and 'train' not in datasets:
            self.problems.append('datasets.train: missing; expected the training dataset options')
        for phase, dataset in datasets.items():
            where = f'datasets.{phase}'
            if not isinstance(dataset, dict):
                self.problems.append(f'{where}: expected a mapping, got {type(dataset).__name__}')
                continue
            self.typed(dataset, where, DATASET_REGISTRY, 'dataset', signature_check=False)
            if dataset.get('type') in DATASET_REGISTRY:
                for key in required_dataset_options(dataset['type'], phase.startswith('train')):
                    self.require(dataset, key, where, f"a value ({dataset['type']} needs it)")
            if phase.startswith('train'):
                for key, expected in (('batch_size_per_gpu', 'a positive integer'),):
                    value = self.require(dataset, key, where, expected)
                    if value is not None and (not isinstance(value, int) or value < 1):
                        self.problems.append(f'{where}.{key}: {value!r} is not {expected}')
            for key in DATAROOT_KEYS:
                path = dataset.get(key)
                if path and not Path(path).exists():
                    self.check_missing_path(f'{where}.{key}', path)

    def check_missing_path(self, where: str, path: str) -> None:
        """A data root that does not exist is fine only if a sample builder will make it (and has not already run
        without making it: a sample folder someone changed)."""
        found = self.sample_builder_for(path)
        hint = sample_data.sample_path_hint(path)
        if found is None:
            self.problems.append(f'{where}: {path} does not exist' + (f' ({hint})' if hint else ''))
        elif isinstance(found, tuple) and Path(found[1]).exists():
            self.problems.append(f'{where}: {path} does not exist, though the sample folder {found[1]} does (it was '
                                 f'changed after it was built: delete it to have it built again)')

    def check_files(self) -> None:
        """Pretrain and resume files exist, and a pretrain checkpoint fits network_g (strict loading)."""
        paths = self.opt.get('path') or {}
        resume = paths.get('resume_state')
        if resume and not Path(resume).is_file():
            self.problems.append(f'path.resume_state: {resume} does not exist')
        pretrain = paths.get('pretrain_network_g')
        if not pretrain:
            return
        if not Path(pretrain).is_file():
            self.problems.append(f'path.pretrain_network_g: {pretrain} does not exist')
            return
        network = self.opt.get('network_g')
        if any(p.startswith('network_g') for p in self.problems) or not isinstance(network, dict) \
                or not paths.get('strict_load_g', True):
            return  # a network that cannot be built is reported already; a non-strict load skips what differs
        try:  # read as the model will (the architecture's remap of an original's names applies)
            given = read_state_dict(pretrain, network['type'], paths.get('param_key_g'))
        except (KeyError, ValueError) as err:
            self.problems.append(f'path.pretrain_network_g: {err.args[0] if err.args else err}')
            return
        mismatches = check_state_dict_fits(_build_on_meta(network), given)
        if mismatches:
            self.problems.append(f"path.pretrain_network_g: {pretrain} does not fit network_g ({network['type']}, "
                                 f"strict_load_g: true): {'; '.join(mismatches)}")

    def check_train(self) -> None:
        train = self.require(self.opt, 'train', '', 'the training options')
        if train is None:
            return
        total = self.require(train, 'total_iter', 'train', 'the number of iterations (optimizer steps)')
        if total is not None and (not isinstance(total, int) or total < 1):
            self.problems.append(f'train.total_iter: {total!r} is not a positive integer')
        optim = self.require(train, 'optim_g', 'train', 'a mapping with type: (a torch.optim optimizer) and lr')
        if optim is not None:
            name = self.require(optim, 'type', 'train.optim_g', 'a torch.optim optimizer name')
            if name is not None and name not in optimizer_names():
                self.problems.append(unknown_name_message('train.optim_g.type', 'optimizer', name, optimizer_names()))
        scheduler = train.get('scheduler')
        if scheduler is not None:
            name = self.require(scheduler, 'type', 'train.scheduler', 'a scheduler name')
            if name is not None and name not in scheduler_names():
                self.problems.append(unknown_name_message('train.scheduler.type', 'scheduler', name, scheduler_names()))
        losses = [key for key in train if key.endswith('_opt')]
        if not losses:
            self.problems.append("train: no loss given; expected at least one '<name>_opt' entry such as pixel_opt")
        for key in losses:
            if train[key] is not None:
                self.typed(train[key], f'train.{key}', LOSS_REGISTRY, 'loss', signature_check=True)

    def check_metrics(self) -> None:
        metrics = (self.opt.get('val') or {}).get('metrics') or {}
        for name, metric in metrics.items():
            self.typed(metric, f'val.metrics.{name}', METRIC_REGISTRY, 'metric', signature_check=False)

    def check_scale(self) -> None:
        scale = self.opt.get('scale')
        if scale is None:
            return
        net = self.opt.get('network_g') or {}
        for key in SCALE_KEYS:
            if key in net and net[key] != scale:
                self.problems.append(f'network_g.{key}: {net[key]} differs from the top-level scale: {scale}')
        for phase, dataset in (self.opt.get('datasets') or {}).items():
            if isinstance(dataset, dict) and dataset.get('scale', scale) != scale:
                self.problems.append(f'datasets.{phase}.scale: {dataset["scale"]} differs from the top-level scale: '
                                     f'{scale}')


def check_options(opt: dict, sample_builder_for: Callable[[str], object | None] | None = None) -> None:
    """Raise ``OptionsError`` listing every problem in ``opt`` (see module docstring); return if none."""
    problems = _Checker(opt, sample_builder_for or sample_data.sample_builder_for).check()
    if problems:
        source = opt.get('opt_path', 'options')
        raise OptionsError(f'{source}: {len(problems)} problem(s) in the options:\n  - ' + '\n  - '.join(problems))


def check_training_set_fits(opt: dict, world_size: int | None = None) -> None:
    """Raise ``OptionsError`` when ``datasets.train.batch_size_per_gpu`` exceeds the samples each process gets per
    epoch (training set x dataset_enlarge_ratio, split over ``world_size`` processes, default torchrun's
    WORLD_SIZE or 1): no full batch would ever be formed. Builds the training dataset (it indexes, reads no
    images); skipped while a data root does not exist yet (sample data is built later; the loop checks again)."""
    train = dict((opt.get('datasets') or {}).get('train') or {})
    if not opt.get('is_train') or not train or any(train.get(k) and not Path(train[k]).exists() for k in DATAROOT_KEYS):
        return
    world_size = world_size or int(os.environ.get('WORLD_SIZE', 1))
    train.setdefault('name', 'train')
    try:
        size = len(DATASET_REGISTRY.get(train['type'])(train))
    except (ValueError, KeyError, OSError) as err:
        raise OptionsError(f"datasets.train ({train['type']}): {err}") from None
    ratio = int(train.get('dataset_enlarge_ratio', 1))
    per_process = math.ceil(size * ratio / world_size)
    batch = int(train['batch_size_per_gpu'])
    if batch > per_process:
        raise OptionsError(f'datasets.train.batch_size_per_gpu: {batch} exceeds the {per_process} samples each of '
                           f'{world_size} process(es) gets per epoch ({size} in the training set x '
                           f'dataset_enlarge_ratio {ratio}); use a batch size <= {per_process}')
