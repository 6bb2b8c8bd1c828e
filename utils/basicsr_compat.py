"""The one place where vsrkit makes BasicSR 1.4.2 (the PyPI release) importable on today's stack.

BasicSR 1.4.2's ``basicsr/data/degradations.py`` does
``from torchvision.transforms.functional_tensor import rgb_to_grayscale``; torchvision 0.17 removed that
private module, so ``import basicsr`` (which imports every submodule) fails. BasicSR's master branch fixed
the import but was never released. We register a stand-in module exposing the same function from its
public home before basicsr is imported. It is idempotent and does nothing where the module still exists.

Everything in vsrkit imports this module (through ``vsrkit.utils``) before its first basicsr import.
Other BasicSR breakages on today's stack (CUDA-only distributed init, metric tensors on 'cuda', Adam-only
optimizers, the cosine-restart crash, eager lmdb opens) are not patched here: vsrkit's own training loop,
schedulers and datasets replace those code paths instead of monkey-patching basicsr.
"""
import importlib.util
import sys
import types

_LEGACY = 'torchvision.transforms.functional_tensor'


def install() -> None:
    """Make ``import basicsr`` work; safe to call any number of times."""
    if _LEGACY in sys.modules:
        return
    try:
        legacy_exists = importlib.util.find_spec(_LEGACY) is not None
    except ModuleNotFoundError:  # torchvision itself is missing: let basicsr report that
        return
    if legacy_exists:
        return
    from torchvision.transforms import functional  # noqa: PLC0415  (only when the stand-in is needed)

    stand_in = types.ModuleType(_LEGACY)
    stand_in.__doc__ = 'vsrkit stand-in for the module removed in torchvision 0.17 (see vsrkit.utils.basicsr_compat)'
    stand_in.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[_LEGACY] = stand_in


install()
