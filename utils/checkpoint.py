"""Checkpoint files: tolerant reading of the usual weight-file layouts (atomic writes: ``vsrkit.utils.atomic``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vsrkit.utils.legacy_checkpoint import load_legacy_checkpoint

WEIGHT_KEYS = ('params_ema', 'params', 'state_dict', 'model_state_dict', 'net_g', 'model')


def load_file(path: str | Path) -> Any:
    """Load a checkpoint on CPU without running pickled code.

    ``torch.load(weights_only=True)`` reads ordinary checkpoints; a whole pickled module (the published VDSR
    files) is converted by the restricted unpickler of ``vsrkit.utils.legacy_checkpoint`` instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
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
