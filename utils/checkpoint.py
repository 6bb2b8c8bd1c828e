"""Checkpoint files: one reader for the usual weight-file formats and layouts, and the safetensors writer.

Formats (by content, not by suffix): ``.pth`` / ``.pt`` / ``.ckpt`` torch pickles (read with
``weights_only=True``, so no pickled code runs; the published VDSR whole-module pickles through the restricted
unpickler of :mod:`vsrkit.utils.legacy_checkpoint`) and ``.safetensors`` (the format model sites distribute).
Layouts: ``params`` / ``params_ema`` (BasicSR), ``state_dict`` (Lightning ``.ckpt``), ``model``, bare state
dicts, and DataParallel/DDP ``module.`` prefixes (:func:`extract_state_dict`).

A safetensors file holds flat tensors and string metadata; vsrkit writes one network's weights (the EMA ones
when training keeps them) with the ``network_g`` options as JSON metadata (and ``train_size``, the LR patch side
it trained on, which inference tiles by), which :func:`load_file` returns as BasicSR's
``{'params': ..., 'network_g': ..., 'train_size': ...}`` so the loader reads both kinds alike. Atomic writes:
``vsrkit.utils.atomic``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from vsrkit.utils.atomic import atomic_write
from vsrkit.utils.legacy_checkpoint import load_legacy_checkpoint

WEIGHT_KEYS = ('params_ema', 'params', 'state_dict', 'model_state_dict', 'net_g', 'model')
SAFETENSORS_MAGIC_END = b'{'  # a safetensors file: 8-byte little-endian header length, then a JSON header


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` holds a safetensors file (its header: a length, then JSON), whatever its suffix."""
    with open(path, 'rb') as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == SAFETENSORS_MAGIC_END and int.from_bytes(head[:8], 'little') > 1


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """A safetensors file: its tensors, or ``{'params': tensors, 'network_g': options[, 'train_size': int]}`` when
    its metadata holds vsrkit's ``network_g``."""
    try:
        tensors = safetensors.torch.load_file(str(path), device='cpu')
        with safetensors.safe_open(str(path), framework='pt') as handle:
            metadata = handle.metadata() or {}
    except (safetensors.SafetensorError, OSError) as err:
        raise ValueError(f'cannot read safetensors file {path}: {err}') from None
    if 'network_g' not in metadata:
        return tensors
    try:
        checkpoint = {'params': tensors, 'network_g': json.loads(metadata['network_g'])}
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: metadata 'network_g' is not JSON ({err})") from None
    if 'train_size' in metadata:
        if not metadata['train_size'].isdigit():
            raise ValueError(f"{path}: metadata 'train_size' must be a whole number, got {metadata['train_size']!r}")
        checkpoint['train_size'] = int(metadata['train_size'])
    return checkpoint


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path, network_g: dict | None = None,
                     train_size: int | None = None) -> Path:
    """Write a state dict as safetensors, atomically, with ``network_g`` (JSON) and ``train_size`` (the LR
    training patch) as metadata.

    Tensors that share storage (tied layers) are written once each under every name: safetensors refuses
    aliases, and loading copies the same values into the tied parameter."""
    seen: set[int] = set()
    tensors = {}
    for key, value in state.items():
        value = value.detach().cpu()
        storage = value.untyped_storage().data_ptr()
        shared = storage in seen or value.numel() != value.untyped_storage().nbytes() // value.element_size()
        tensors[key] = value.clone() if shared or not value.is_contiguous() else value
        seen.add(storage)
    metadata = {'format': 'pt'}
    if network_g is not None:
        metadata['network_g'] = json.dumps(network_g)
    if train_size is not None:
        metadata['train_size'] = str(train_size)
    data = safetensors.torch.save(tensors, metadata=metadata)
    return atomic_write(path, lambda handle: handle.write(data))


def load_file(path: str | Path) -> Any:
    """Load a checkpoint on CPU without running pickled code (module docstring: the formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if is_safetensors(path):
        return load_safetensors(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        try:
            return load_legacy_checkpoint(path)
        except Exception:
            raise ValueError(f'cannot read checkpoint {path}: {err}') from None


def extract_state_dict(checkpoint: Any, param_key: str | None = None, source: str = 'checkpoint') -> dict:
    """The network weights inside ``checkpoint``: ``param_key`` if given, else the first of WEIGHT_KEYS
    present (``params_ema`` before ``params``, as BasicSR's inference does), else the dict itself; a
    DataParallel/DDP ``module.`` prefix is removed."""
    state = checkpoint
    if isinstance(checkpoint, dict):
        if param_key is not None:
            if param_key not in checkpoint:
                raise KeyError(f"{source}: no '{param_key}' entry; it has {sorted(map(str, checkpoint))[:10]}")
            state = checkpoint[param_key]
        else:
            for key in WEIGHT_KEYS:
                if isinstance(checkpoint.get(key), dict):
                    state = checkpoint[key]
                    break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f'{source}: does not contain a state dict of tensors')
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}


def latest_training_state(folder: str | Path) -> Path | None:
    """The ``<iter>.state`` file with the highest iteration in ``folder``, if any."""
    folder = Path(folder)
    states = [p for p in folder.glob('*.state') if p.stem.isdigit()] if folder.is_dir() else []
    return max(states, key=lambda p: int(p.stem)) if states else None
