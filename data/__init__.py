"""vsrkit.data: importing this package registers every `*_dataset.py` module's datasets in basicsr's registry.
``build_dataset(opt)`` builds a dataset from its options by name, as BasicSR's builder of the same name does."""
from torch.utils.data import Dataset

import vsrkit.utils  # noqa: F401  (applies the basicsr compatibility shim before any basicsr import)
from vsrkit.utils.registry import DATASET_REGISTRY, import_submodules, lookup

__all__ = ['build_dataset']

# every module's classes registered on import, so the builder finds them whatever was imported before
import_submodules(__name__, __file__, '_dataset')


def build_dataset(opt: dict, where: str = 'dataset') -> Dataset:
    """BasicSR's ``build_dataset``: the dataset ``opt['type']`` names (vsrkit's or basicsr's) built from the whole
    ``opt`` (datasets take their options as one dict). ``where``: the options key, for the error message."""
    return lookup(DATASET_REGISTRY, opt.get('type'), 'dataset', f'{where}.type')(opt)
