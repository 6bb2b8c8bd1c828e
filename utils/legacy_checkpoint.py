"""Safe reading of the published VDSR whole-module pickles as ordinary state-dict checkpoints.

twtygqyy/pytorch-vdsr publishes ``model_epoch_50.pth`` as a legacy (pre-zip) pickle ``{'epoch': 50, 'model':
vdsr.Net}`` with storages on cuda:0, and War-Keeper/pytorch-vdsr-optimization its pruned net as a zip pickle of a
whole ``vdsr.Net``. A plain ``torch.load(weights_only=False)`` would import and run whatever classes such a file
names. Here ``torch.load`` gets a restricted pickle module instead: its unpickler resolves only an allow-list of
globals — tensor/storage rebuild functions, ``Parameter``, ``OrderedDict``, ``set``, and the few module classes
these files contain (``vdsr.Net``, ``vdsr.Conv_ReLU_Block``, torch's ``Conv2d``/``ReLU``/``Sequential``), the
latter mapped to inert stand-ins that only keep their pickled attributes. Anything else (``os.system``,
``builtins.eval`` …) raises :class:`UnsafePickleError` before it is called. Storages are mapped to the CPU.

The result is ``{'params': state_dict}``. What network it is, and with which options (a pruned VDSR's per-layer
widths), is the architecture's business, not this reader's: VDSR's spec (:mod:`vsrkit.archs.vdsr_arch`) infers
them from the shapes when the generic loader (:mod:`vsrkit.archs.loader`) reads the file.
"""
from __future__ import annotations

import _compat_pickle
import os
import pickle
import types
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vsrkit.utils.atomic import atomic_save

__all__ = ['UnsafePickleError', 'RestrictedUnpickler', 'RESTRICTED_PICKLE', 'load_legacy_checkpoint',
           'module_state_dict', 'save_checkpoint']


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle names a global outside the allow-list (nothing from it was imported or called)."""


class _PickledModule:
    """Inert stand-in for a pickled ``nn.Module``: keeps the pickled ``__dict__`` and runs nothing."""

    original = 'torch.nn.Module'

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


def _stand_in(qualified_name: str) -> type[_PickledModule]:
    return type(qualified_name.rpartition('.')[2], (_PickledModule,), {'original': qualified_name})


def _no_backend(*args: Any) -> None:
    """Stand-in for torch<0.4's ``torch.nn.backends.thnn._get_thnn_function_backend`` (gone from torch)."""
    return None


_MODULE_CLASSES = ('vdsr.Net', 'vdsr.Conv_ReLU_Block', 'torch.nn.modules.conv.Conv2d',
                   'torch.nn.modules.activation.ReLU', 'torch.nn.modules.container.Sequential')

_ALLOWED: dict[tuple[str, str], Any] = {
    ('torch._utils', '_rebuild_tensor'): torch._utils._rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
    ('torch.nn.parameter', 'Parameter'): nn.Parameter,
    ('collections', 'OrderedDict'): OrderedDict,
    ('builtins', 'set'): set,
    ('torch.nn.backends.thnn', '_get_thnn_function_backend'): _no_backend,
    **{tuple(name.rsplit('.', 1)): _stand_in(name) for name in _MODULE_CLASSES},
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the allow-listed globals (see module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol <= 2 pickles (torch.save's default) spell Python 3 names the Python 2 way, e.g. __builtin__.set.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global '{module}.{name}': only tensors, storages, OrderedDict/set and the "
                f"VDSR module classes are allowed in a legacy checkpoint") from None


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load(pickle_module=...) needs: a module-like object with Unpickler and load (and a __name__).
RESTRICTED_PICKLE = types.ModuleType('vsrkit_restricted_pickle', 'pickle restricted to tensors and VDSR modules')
RESTRICTED_PICKLE.Unpickler = RestrictedUnpickler
RESTRICTED_PICKLE.load = _restricted_load


def module_state_dict(module: _PickledModule, prefix: str = '') -> OrderedDict[str, torch.Tensor]:
    """``state_dict()`` of an unpickled module stand-in: parameters and persistent buffers, in pickled order."""
    state = module.state
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    non_persistent = state.get('_non_persistent_buffers_set', set())
    for name, tensor in state.get('_parameters', {}).items():
        if tensor is not None:
            out[prefix + name] = tensor.detach().clone()
    for name, tensor in state.get('_buffers', {}).items():
        if tensor is not None and name not in non_persistent:
            out[prefix + name] = tensor.detach().clone()
    for name, child in state.get('_modules', {}).items():
        if child is not None:
            out.update(module_state_dict(child, f'{prefix}{name}.'))
    return out


def load_legacy_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a VDSR checkpoint without running pickled code and return ``{'params': state_dict}``.

    Accepts the published whole-module pickles (legacy or zip format, bare module or ``{'model': module}``), a plain
    state dict, or an already converted checkpoint (returned as it is, ``network_g`` included). Raises
    FileNotFoundError, :class:`UnsafePickleError` (a ValueError) when the file names a global outside the
    allow-list, or ValueError when it holds neither a module nor a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        with warnings.catch_warnings():
            # Legacy pickles carry the original classes' source for a consistency check that our stand-ins
            # cannot (and need not) pass.
            warnings.simplefilter('ignore', torch.serialization.SourceChangeWarning)
            warnings.filterwarnings('ignore', message="Couldn't retrieve source code for container")
            obj = torch.load(path, map_location='cpu', pickle_module=RESTRICTED_PICKLE, weights_only=False)
    except UnsafePickleError as e:
        raise UnsafePickleError(f'{path}: {e}') from None
    if isinstance(obj, dict) and isinstance(obj.get('params'), dict):
        return obj
    if isinstance(obj, dict) and 'model' in obj:
        obj = obj['model']
    if isinstance(obj, _PickledModule):
        state_dict = module_state_dict(obj)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict = OrderedDict(obj)
    else:
        raise ValueError(f'{path}: expected a pickled VDSR module, {{"model": module}} or a state dict, '
                         f'got {type(obj).__name__}')
    return {'params': state_dict}


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save atomically (``vsrkit.utils.atomic.atomic_save``); refuses an existing ``path`` unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f'{path} exists; pass overwrite=True (--overwrite) to replace it')
    return atomic_save(checkpoint, path)
