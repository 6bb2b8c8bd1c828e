"""vsrkit.models: importing this package registers every `*_model.py` module's classes in basicsr's registries.
``build_model(opt)`` builds a model from its options by name, as BasicSR's builder of the same name does."""
from typing import Any

import vsrkit.utils  # noqa: F401  (applies the basicsr compatibility shim before any basicsr import)
from vsrkit.utils.registry import MODEL_REGISTRY, import_submodules, lookup

__all__ = ['build_model']

# every module's classes registered on import, so the builder finds them whatever was imported before
import_submodules(__name__, __file__, '_model')


def build_model(opt: dict) -> Any:
    """BasicSR's ``build_model``: the model type ``opt['model_type']`` names (vsrkit's or basicsr's) built from the
    whole options dict."""
    return lookup(MODEL_REGISTRY, opt.get('model_type'), 'model type', 'model_type')(opt)
