"""The one place where vsrkit makes BasicSR 1.4.2 (the PyPI release) importable on today's stack.

BasicSR 1.4.2's ``basicsr/data/degradations.py`` does
``from torchvision.transforms.functional_tensor import rgb_to_grayscale``; torchvision 0.17 removed that
private module, so ``import basicsr`` (which imports every submodule) fails. BasicSR's master branch fixed
the import but was never released. We register a stand-in module exposing the same function from its
public home before basicsr is imported. It is idempotent and does nothing where the module still exists.

Everything in vsrkit imports this module (through ``vsrkit.utils``) before its first basicsr import.

Second, and last, patch: basicsr's video models (``VideoBaseModel``, ``VideoRecurrentModel`` and their
subclasses) create their per-frame metric tensors with ``torch.zeros(..., device='cuda')`` in
``dist_validation``, so they cannot validate on a machine without CUDA. They create them only when the model
has no ``metric_results`` yet; ``metric_tensors_on_model_device`` wraps ``dist_validation`` to create the same
tensors first, on the model's own device (``self.device``: CPU when ``num_gpu`` is 0). The same wrapper mends
the one other CPU-only fault on that path: ``VideoRecurrentModel`` unsqueezes a clip in place, feeds it, then
squeezes it back in place; on the GPU ``feed_data``'s ``.to('cuda')`` made a copy, on the CPU ``.to('cpu')``
returns the very tensor, so the squeeze also shrinks the model's input to 4-D. During validation the wrapper
feeds new tensor objects over the same memory (``view_as``: no copy). Nothing else changes.

Other BasicSR breakages on today's stack (CUDA-only distributed init and resume, Adam-only optimizers, the
cosine-restart crash, eager lmdb opens) are not patched here: vsrkit's own training loop, schedulers and
datasets replace those code paths instead of monkey-patching basicsr.
"""
import functools
import importlib.util
import sys
import types
from collections import Counter

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

import torch  # noqa: E402  (the basicsr imports must follow install())
from basicsr.models.video_base_model import VideoBaseModel  # noqa: E402
from basicsr.models.video_recurrent_model import VideoRecurrentModel  # noqa: E402


def metric_tensors_on_model_device(dist_validation):
    """Wrap a basicsr video model's ``dist_validation`` so that its metric tensors live on ``self.device``."""
    if getattr(dist_validation, 'vsrkit_patched', False):
        return dist_validation

    @functools.wraps(dist_validation)
    def wrapper(self, dataloader, current_iter, tb_logger, save_img):
        metrics = self.opt['val']['metrics']
        if metrics is not None and not hasattr(self, 'metric_results'):  # the condition basicsr creates them on
            frames = Counter(dataloader.dataset.data_info['folder'])
            self.metric_results = {folder: torch.zeros(n, len(metrics), dtype=torch.float32, device=self.device)
                                   for folder, n in frames.items()}
        feed_data = self.feed_data
        self.feed_data = lambda data: feed_data({k: v.view_as(v) if torch.is_tensor(v) else v for k, v in data.items()})
        try:
            return dist_validation(self, dataloader, current_iter, tb_logger, save_img)
        finally:
            del self.feed_data  # the class's method again

    wrapper.vsrkit_patched = True
    return wrapper


for _model in (VideoBaseModel, VideoRecurrentModel):  # each defines its own dist_validation
    _model.dist_validation = metric_tensors_on_model_device(_model.dist_validation)
