"""Options: read a BasicSR-style YAML file, apply ``--force_yml`` overrides, fill defaults and paths.

Checking the options against the registries is ``vsrkit.engine.option_checks``; this module only loads.
Relative paths in the options (datasets, pretrained weights, resume states) resolve against the project
root, not the working directory, so a run can be started or resumed from anywhere.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from vsrkit.utils.signature import OptionsError


PATH_SUFFIXES = ('dataroot_gt', 'dataroot_lq', 'meta_info_file', 'pretrain_network_g', 'pretrain_network_d',
                 'resume_state', 'spynet_path')


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise OptionsError(f'options file {path} does not exist')
    try:
        opt = yaml.safe_load(path.read_text(encoding='utf-8'))
    except yaml.YAMLError as err:
        raise OptionsError(f'{path}: not valid YAML: {err}') from None
    if not isinstance(opt, dict):
        raise OptionsError(f'{path}: expected a mapping of options at the top level, got {type(opt).__name__}')
    return opt


def apply_overrides(opt: dict, overrides: Iterable[str], source: str = '--force_yml') -> None:
    """Apply ``key:sub:leaf=value`` (BasicSR's syntax; ``.`` works as separator too); value parsed as YAML."""
    for entry in overrides:
        if '=' not in entry:
            raise OptionsError(f"{source} {entry!r}: expected 'key:subkey=value'")
        keys, value = entry.split('=', 1)
        parts = [k for k in keys.strip().replace('.', ':').split(':') if k]
        if not parts:
            raise OptionsError(f"{source} {entry!r}: empty key")
        node = opt
        for depth, key in enumerate(parts[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise OptionsError(f"{source} {entry!r}: '{':'.join(parts[:depth + 1])}' is not a mapping")
            node = child
        node[parts[-1]] = parse_value(value.strip())


def parse_value(text: str) -> object:
    """A command-line option value as YAML, except that '2e-4' is a float (YAML 1.1 reads it as a string)."""
    value = yaml.safe_load(text) if text else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def resolve_path(value: str | None, root: Path) -> str | None:
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else (root / path).resolve())


def _resolve_paths(node: Any, root: Path) -> None:
    """Resolve every option whose key is a path key (at any depth) against ``root``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in PATH_SUFFIXES and isinstance(value, (str, Path)):
                node[key] = resolve_path(value, root)
            else:
                _resolve_paths(value, root)
    elif isinstance(node, list):
        for item in node:
            _resolve_paths(item, root)


def load_options(path: str | Path, *, root: str | Path, overrides: Iterable[str] = (), is_train: bool = True,
                 debug: bool = False) -> dict:
    """Load an options file into a plain dict with BasicSR's derived fields filled in.

    Adds ``opt['path']`` (experiments_root, models, training_states, log, visualization, tb_logger), copies the
    top-level ``scale`` into each dataset, names each dataset's ``phase``, and resolves path options.
    """
    root = Path(root).resolve()
    opt = read_yaml(path)
    apply_overrides(opt, overrides)
    opt = copy.deepcopy(opt)
    opt['opt_path'] = str(Path(path).resolve())
    opt['root_path'] = str(root)
    opt['is_train'] = is_train
    if debug and not str(opt.get('name', '')).startswith('debug'):
        opt['name'] = f"debug_{opt.get('name', 'run')}"
    for phase, dataset in (opt.get('datasets') or {}).items():
        if isinstance(dataset, dict):
            dataset['phase'] = phase.split('_')[0]
            if 'scale' in opt:
                dataset.setdefault('scale', opt['scale'])
    _resolve_paths(opt, root)

    name = str(opt.get('name', 'unnamed'))
    paths = opt.setdefault('path', {}) or {}
    opt['path'] = paths
    base = Path(paths.get('experiments_root') or root / ('experiments' if is_train else 'results') / name)
    paths['experiments_root'] = str(base)
    if is_train:
        paths.setdefault('models', str(base / 'models'))
        paths.setdefault('training_states', str(base / 'training_states'))
        paths.setdefault('visualization', str(base / 'visualization'))
        paths.setdefault('tb_logger', str(root / 'tb_logger' / name))
    paths.setdefault('log', str(base))
    if debug:
        train = opt.setdefault('train', {})
        logger = opt.setdefault('logger', {})
        logger['print_freq'] = 1
        logger['save_checkpoint_freq'] = 8
        if 'val' in opt:
            opt['val']['val_freq'] = 8
        train['total_iter'] = min(int(train.get('total_iter', 8)), 16)
    return opt


def dump_options(opt: dict) -> str:
    return yaml.safe_dump(opt, sort_keys=False, default_flow_style=None)
