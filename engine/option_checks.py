"""Check an options dict against the registries before any process or worker starts.

Every problem found is reported in one ``OptionsError`` listing the YAML key path, the offending value and
what was expected (for an unknown ``type:``: the registered names and the closest match), so a typo costs
one run of ``dist_train.sh`` and no traceback wall from N workers.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable, Iterable

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
from vsrkit.data import sample_data
from vsrkit.models.optim import optimizer_names, scheduler_names
from vsrkit.utils.signature import OptionsError, signature_problem
from vsrkit.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

DATAROOT_KEYS = ('dataroot_gt', 'dataroot_lq', 'meta_info_file')
SCALE_KEYS = ('scale', 'upscale')


def unknown_name_message(where: str, kind: str, name: object, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ''
    return f"{where}: unknown {kind} '{name}'.{hint} Registered: {', '.join(known)}"


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
        if self.require(opt, 'network_g', '', 'a mapping with type: and the architecture options') is not None:
            self.typed(opt['network_g'], 'network_g', ARCH_REGISTRY, 'architecture', signature_check=True)
        self.check_datasets()
        if opt.get('is_train'):
            self.check_train()
        self.check_metrics()
        self.check_scale()
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
            if phase.startswith('train'):
                for key, expected in (('batch_size_per_gpu', 'a positive integer'),):
                    value = self.require(dataset, key, where, expected)
                    if value is not None and (not isinstance(value, int) or value < 1):
                        self.problems.append(f'{where}.{key}: {value!r} is not {expected}')
            for key in DATAROOT_KEYS:
                path = dataset.get(key)
                if path and not Path(path).exists() and self.sample_builder_for(path) is None:
                    self.problems.append(f'{where}.{key}: {path} does not exist')

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
