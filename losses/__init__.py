"""vsrkit.losses: importing this package registers every `*_loss.py` module's classes in basicsr's registries.
``build_loss(opt)`` builds a loss from its options by name, as BasicSR's builder of the same name does."""
from torch import nn

import vsrkit.utils  # noqa: F401  (applies the basicsr compatibility shim before any basicsr import)
from vsrkit.utils.registry import LOSS_REGISTRY, import_submodules, lookup

__all__ = ['build_loss']

# every module's classes registered on import, so the builder finds them whatever was imported before
import_submodules(__name__, __file__, '_loss')


def build_loss(opt: dict, where: str = 'loss') -> nn.Module:
    """BasicSR's ``build_loss``: the loss ``opt['type']`` names (vsrkit's or basicsr's) built with the other keys
    as its arguments; ``opt`` is left as it is. ``where``: the options key, for the error message."""
    kwargs = dict(opt)
    return lookup(LOSS_REGISTRY, kwargs.pop('type', None), 'loss', f'{where}.type')(**kwargs)
