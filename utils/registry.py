"""Registration into BasicSR's global registries, safe against re-import.

BasicSR's ``Registry.register`` raises when a name is taken, also when the same file is executed twice
(``importlib.reload``, or one file reached under two module paths). ``register`` below accepts a
re-registration of the very same definition (same module and qualified name) and still raises, with a
clear message, when a different class would shadow an existing name — e.g. one of basicsr's own.
"""
from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import vsrkit.utils.basicsr_compat  # noqa: F401  (must precede the basicsr import)
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY, Registry
from vsrkit.utils.signature import OptionsError

T = TypeVar('T')

__all__ = ['ARCH_REGISTRY', 'DATASET_REGISTRY', 'LOSS_REGISTRY', 'METRIC_REGISTRY', 'MODEL_REGISTRY', 'register',
           'import_submodules', 'unknown_name_message', 'lookup']


def _origin(obj: object) -> tuple[str, str]:
    return getattr(obj, '__module__', ''), getattr(obj, '__qualname__', '')


def register(registry: Registry, name: str | None = None) -> Callable[[T], T]:
    """Decorator: register ``obj`` in ``registry`` under ``name`` (default: its ``__name__``)."""

    def deco(obj: T) -> T:
        key = name or obj.__name__
        existing = registry._obj_map.get(key)
        if existing is not None and existing is not obj:
            if _origin(existing) != _origin(obj):
                raise KeyError(f"Cannot register {_origin(obj)[0]}.{_origin(obj)[1]} as '{key}' in basicsr's "
                               f"{registry._name} registry: the name is already taken by "
                               f'{_origin(existing)[0]}.{_origin(existing)[1]}.')
        registry._obj_map[key] = obj
        return obj

    return deco


def import_submodules(package: str, package_file: str, suffix: str) -> list[str]:
    """Import every ``*<suffix>.py`` module next to ``package_file`` so that its classes register themselves.

    The BasicSR convention: ``vsrkit.archs`` imports every ``*_arch.py``, ``vsrkit.models`` every
    ``*_model.py`` and so on. Returns the imported module names (sorted, so registration order is stable).
    """
    folder = Path(package_file).parent
    names = sorted(p.stem for p in folder.glob(f'*{suffix}.py'))
    for stem in names:
        importlib.import_module(f'{package}.{stem}')
    return [f'{package}.{stem}' for stem in names]


def unknown_name_message(where: str, kind: str, name: object, known: Iterable[str]) -> str:
    """One line for a name no registry entry has: where it was given, the closest registered name, all of them."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ''
    return f"{where}: unknown {kind} '{name}'.{hint} Registered: {', '.join(known)}"


def lookup(registry: Registry, name: object, kind: str, where: str) -> Any:
    """``registry``'s entry ``name``; OptionsError naming ``where`` when the name is missing or unknown (basicsr's
    own ``Registry.get`` only says 'No object named ... found')."""
    if name is None:
        raise OptionsError(f'{where}: missing; expected the name of a registered {kind}')
    # basicsr registers some classes under '<name>_basicsr' (e.g. SRVGGNetCompact); its own get() falls back to
    # that suffix, so YAMLs written for basicsr name them without it
    if name not in registry and f'{name}_basicsr' not in registry:
        raise OptionsError(unknown_name_message(where, kind, name, registry.keys()))
    return registry.get(name)
