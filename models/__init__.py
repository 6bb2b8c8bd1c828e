"""vsrkit.models: importing this package registers every `*_model.py` module's classes in basicsr's registries."""
import vsrkit.utils  # noqa: F401  (applies the basicsr compatibility shim before any basicsr import)
from vsrkit.utils.registry import import_submodules

__all__ = import_submodules(__name__, __file__, '_model')
