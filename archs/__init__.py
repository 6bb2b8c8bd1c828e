"""vsrkit.archs: importing this package registers every `*_arch.py` module's classes in basicsr's registries, with
the spec beside each class, and the specs of basicsr's own architectures (`basicsr_specs`).
``build_network(opt)`` builds a network from its options by name, as BasicSR's builder of the same name does."""
from torch import nn

import vsrkit.utils  # noqa: F401  (applies the basicsr compatibility shim before any basicsr import)
from vsrkit.archs import basicsr_specs  # noqa: F401  (registers the specs of basicsr's architectures)
from vsrkit.utils.registry import ARCH_REGISTRY, import_submodules, lookup

__all__ = ['build_network']

# every module's classes registered on import, so the builder finds them whatever was imported before
import_submodules(__name__, __file__, '_arch')


def build_network(opt: dict, where: str = 'network') -> nn.Module:
    """BasicSR's ``build_network``: the architecture ``opt['type']`` names (vsrkit's or basicsr's) built with the
    other keys as its arguments; ``opt`` is left as it is. ``where``: the options key, for the error message."""
    kwargs = dict(opt)
    return lookup(ARCH_REGISTRY, kwargs.pop('type', None), 'architecture', f'{where}.type')(**kwargs)
