"""MIAVSR / IIAVSR against the original code (../shared/reference/originals/miavsr, LabShuHangGU/MIA-VSR,
CPU-patched): the original is built with seeded random weights, its state dict is loaded strictly into
vsrkit's network, and eval outputs are compared (max |diff| <= 1e-5).

- MIA-VSR with the mask disabled.
- MIA-VSR with the mask on and its decisions forced equal: a hard decision at logit ~ 0 flips under fp32
  reordering, so both networks' decisions are replaced by the same seeded random keep masks (in image
  coordinates, mapped to each network's own window order); the rest of each network — which tokens are
  recomputed, which reuse the previous frame's outputs — runs as written. vsrkit's sparse (gather/scatter) and
  dense (compute all, select) eval paths both, and the original's training-mode forward (noise and drop path
  off) too.
- IIA-VSR against the original with its flow-direction fix applied (NOTES §4 b: ``if 'backward' in
  module_name:`` restored in ``propagate``, in a module compiled here from the original's text; the shared
  folder is never modified), and unequal to the unfixed original.

The originals are imported only here, with their folder's parent put on ``sys.path`` for this module; every
test skips, saying why, where the folder is absent.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import vsrkit.archs  # noqa: F401  (registers the archs; basicsr compatibility shim before the originals' imports)
from vsrkit.archs import mia_attention, mia_block
from vsrkit.archs.iiavsr_arch import IIAVSR
from vsrkit.archs.miavsr_arch import MIAVSR

# small enough for a few seconds per forward; mid_channels 64 (the original hard-codes 64 in its head); two
# residual groups of an unshifted and a shifted block each
CONFIG = dict(mid_channels=64, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=(3, 8, 8), num_frames=3)
SIZE = (64, 64)  # the original asserts LR frames of at least 64 px
FRAMES = 3
TOLERANCE = 1e-5

pytestmark = pytest.mark.usefixtures('single_thread')  # small tensors: see conftest.single_thread


@pytest.fixture(scope='module')
def originals(reference_dir):
    """The original ``miavsr`` package (its folder's parent on sys.path for this module only)."""
    root = reference_dir / 'originals'  # reference_dir skips where ../shared/reference is absent
    if not (root / 'miavsr' / 'mia_vsr_arch.py').is_file():
        pytest.skip(f'original MIA-VSR code not found at {root / "miavsr"} (a fixture present only in the '
                    'vsrkit workspace: ../shared/reference/originals, see its README.md)')
    pytest.importorskip('timm', reason='the original MIA-VSR code imports timm')
    sys.path.insert(0, str(root))
    try:
        package = types.SimpleNamespace(
            mia=importlib.import_module('miavsr.mia_vsr_arch'),
            mia_sliding=importlib.import_module('miavsr.mia_sliding_arch'),
            iia=importlib.import_module('miavsr.iia_vsr_arch'))
        package.iia_fixed = _flow_direction_fixed(package.iia)
        yield package
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == 'miavsr' or n.startswith('miavsr.')]:
            del sys.modules[name]


def _flow_direction_fixed(iia: types.ModuleType) -> types.ModuleType:
    """The original IIA-VSR module with ``if 'backward' in module_name:`` restored in ``propagate`` (as in
    MIA-VSR's file): compiled from the original's text into a new module of the same package."""
    source = Path(iia.__file__).read_text()
    bug = ("        # if 'backward' in module_name:\n"
           "        frame_idx = frame_idx[::-1]\n"
           "        flow_idx = frame_idx\n")
    fix = ("        if 'backward' in module_name:\n"
           "            frame_idx = frame_idx[::-1]\n"
           "            flow_idx = frame_idx\n")
    assert source.count(bug) == 1, 'the original iia_vsr_arch.propagate changed: update the fix'
    module = types.ModuleType('miavsr.iia_vsr_arch_flow_fixed')
    module.__package__, module.__file__ = 'miavsr', iia.__file__
    exec(compile(source.replace(bug, fix), iia.__file__, 'exec'), module.__dict__)
    return module


def clip() -> torch.Tensor:
    """Real LR frames: crops of scikit-image's astronaut photo shifted by a few pixels per frame."""
    skimage_data = pytest.importorskip('skimage.data')
    photo = torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1).float() / 255  # (3, 512, 512)
    small = nn.functional.interpolate(photo[None], size=(128, 128), mode='area')[0]
    h, w = SIZE
    return torch.stack([small[:, 20 + 2 * i:20 + 2 * i + h, 30 + 3 * i:30 + 3 * i + w]
                        for i in range(FRAMES)])[None].contiguous()


def build_pair(original_class: type, ours_class: type, device: torch.device = torch.device('cpu'),
               **kwargs) -> tuple[nn.Module, nn.Module]:
    """The original with seed-0 random weights and vsrkit's network with its state dict loaded strictly; both
    in eval mode on ``device``."""
    torch.manual_seed(0)
    original = original_class(**CONFIG, **kwargs)
    ours = ours_class(**CONFIG)
    ours.load_state_dict(original.state_dict(), strict=True)
    return original.eval().to(device), ours.eval().to(device)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def test_miavsr_mask_disabled_equals_the_original(originals, device):
    original, ours = build_pair(originals.mia.MIAVSR, MIAVSR, device, use_mask=False)
    ours.use_mask = False
    lqs = clip().to(device)
    with torch.no_grad():
        expected, _ = original(lqs)
        out = ours(lqs)
    assert max_diff(out, expected) <= TOLERANCE


class ForcedDecisions:
    """The same keep decisions for both networks: call i of a network's mask (blocks in order, steps after a
    branch's first) gets mask i, a seeded random (h, w) bool image with keep share i-dependent — all kept and
    none kept among them — mapped to the network's window order for that block's shift."""

    def __init__(self, shifted: list[bool], size: tuple[int, int], window: tuple[int, int]) -> None:
        self.shifted, self.size, self.window = shifted, size, window
        self.calls = 0

    def image(self, i: int) -> torch.Tensor:
        share = (0.0, 0.3, 1.0, 0.6, 0.97, 0.1, 0.5, 0.8)[i % 8]
        generator = torch.Generator().manual_seed(1000 + i)
        return torch.rand(self.size, generator=generator) < share

    def next(self) -> tuple[torch.Tensor, bool]:
        i, self.calls = self.calls, self.calls + 1
        return self.image(i), self.shifted[i % len(self.shifted)]

    def original_order(self) -> torch.Tensor:
        """(windows, Wh*Ww, 1) float, as the original's Gumbel returns: rolled by half a window for shifted
        blocks, windows in (row, col) order, tokens row-major."""
        keep, shifted = self.next()
        wh, ww = self.window
        if shifted:
            keep = keep.roll((-(wh // 2), -(ww // 2)), (0, 1))
        h, w = self.size
        return keep.view(h // wh, wh, w // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww, 1).float()


def force_decisions(monkeypatch, original: nn.Module, ours: nn.Module) -> tuple[ForcedDecisions, ForcedDecisions]:
    """Replace the original's Gumbel decisions and vsrkit's ``keep_decision`` with ForcedDecisions."""
    branch = ours.patch_align['forward_2']
    shifted = [block.shifted for layer in branch.layers for block in layer.residual_group.blocks]
    original_shifted = [any(s > 0 for s in block.shift_size)
                        for layer in original.patch_align['forward_2'].layers for block in layer.residual_group.blocks]
    assert original_shifted == shifted
    theirs, mine = (ForcedDecisions(shifted, SIZE, ours.window_size[1:]) for _ in range(2))

    def gumbel_forward(self, x, gumbel_temp=1.0, gumbel_noise=True):
        return theirs.original_order().to(x)

    def keep_decision(logits, batch, training, control):
        keep, block_shifted = mine.next()
        return ours._layout.windows(keep[None, :, :, None].to(logits), block_shifted).view_as(logits)

    sliding = sys.modules[type(original.patch_align['forward_2']).__module__]
    monkeypatch.setattr(sliding.Gumbel, 'forward', gumbel_forward)
    monkeypatch.setattr(mia_block, 'keep_decision', keep_decision)
    return theirs, mine


@pytest.mark.parametrize('workers', [1, 2], ids=['one thread', 'two chunk workers'])
@pytest.mark.parametrize('sparse', [True, False], ids=['sparse', 'dense'])
def test_miavsr_mask_on_with_forced_decisions_equals_the_original(originals, monkeypatch, sparse, workers, device):
    if workers > 1 and device.type != 'cpu':
        pytest.skip('chunk workers are a CPU mechanism')
    original, ours = build_pair(originals.mia.MIAVSR, MIAVSR, device, use_mask=True)
    ours.sparse_inference = sparse
    if workers > 1:  # every call of every block handed to two single-threaded workers (utils.chunk_workers)
        for module in (mia_attention, mia_block):
            monkeypatch.setattr(module, 'MIN_WINDOWS_PER_WORKER', 1)
        monkeypatch.setattr(torch, 'get_num_threads', lambda: workers)
    theirs, mine = force_decisions(monkeypatch, original, ours)
    lqs = clip().to(device)
    with torch.no_grad():
        expected, _ = original(lqs)
        out, ratios = ours(lqs, return_keep_ratios=True)
    calls = 4 * (FRAMES - 1) * sum(CONFIG['depths'])
    assert theirs.calls == mine.calls == calls
    assert 0.3 < ratios.mean().item() < 0.7 and ratios.min() == 0 and ratios.max() == 1
    assert max_diff(out, expected) <= TOLERANCE


def test_original_training_forward_without_noise_equals_vsrkit_eval(originals, monkeypatch, device):
    """The original's training-mode function (straight-through blend of every token, noise and drop path off)
    with the decisions forced equal gives vsrkit's eval (gather/scatter) output."""
    original, ours = build_pair(originals.mia.MIAVSR, MIAVSR, device, use_mask=True)
    for module in original.modules():
        if type(module).__name__ == 'DropPath':
            module.drop_prob = 0.0
    force_decisions(monkeypatch, original, ours)
    lqs = clip().to(device)
    with torch.no_grad():
        expected, _ = original.train()(lqs)
        out = ours(lqs)
    assert max_diff(out, expected) <= TOLERANCE


def test_iiavsr_equals_the_original_with_its_flow_direction_fixed(originals, device):
    original, ours = build_pair(originals.iia_fixed.IIAVSR, IIAVSR, device)
    unfixed = originals.iia.IIAVSR(**CONFIG).eval().to(device)
    unfixed.load_state_dict(original.state_dict(), strict=True)
    lqs = clip().to(device)
    with torch.no_grad():
        expected, _ = original(lqs)
        out = ours(lqs)
        as_published, _ = unfixed(lqs)
    assert max_diff(out, expected) <= TOLERANCE
    assert max_diff(out, as_published) > 10 * TOLERANCE  # the fix is what makes them agree (2.6e-4 measured)
