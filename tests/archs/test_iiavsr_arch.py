"""IIAVSR: checkpoint compatibility, equality with MIA-VSR's unmasked function, and bug (b): every branch gets
the flows of its own direction and frame pair."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import vsrkit.archs  # noqa: F401  (registers the archs)
from vsrkit.archs import mia_network
from vsrkit.archs.iiavsr_arch import IIAVSR
from vsrkit.archs.miavsr_arch import MIAVSR
from vsrkit.utils.registry import ARCH_REGISTRY

TINY = dict(mid_channels=8, embed_dim=12, depths=(2,), num_heads=(2,), drop_path_rate=0.0)


pytestmark = pytest.mark.usefixtures('single_thread')  # tiny tensors: see conftest.single_thread


def test_state_dict_matches_official_keys(reference_keys):
    assert ARCH_REGISTRY.get('IIAVSR') is IIAVSR
    model = IIAVSR()
    entries = [(k, tuple(v.shape), str(v.dtype).removeprefix('torch.')) for k, v in model.state_dict().items()]
    assert entries == reference_keys('iiavsr_reds')
    assert not any('predmask' in k for k, _, _ in entries)
    # MIA-VSR minus its mask predictors (4 branches x 24 blocks x 121 parameters)
    assert sum(p.numel() for p in model.parameters()) == 16_596_719 - 4 * 24 * 121


def test_equals_miavsr_without_mask_and_odd_batch():
    torch.manual_seed(0)
    iia = IIAVSR(**TINY).eval()
    mia = MIAVSR(**TINY).eval()
    missing, unexpected = mia.load_state_dict(iia.state_dict(), strict=False)
    assert not unexpected and all('predmask' in k for k in missing)
    mia.use_mask = False
    lqs = torch.rand(2, 3, 3, 37, 45)
    with torch.no_grad():
        out, ratios = iia(lqs, return_keep_ratios=True)
        assert torch.allclose(out, mia(lqs), atol=1e-6)
    assert out.shape == (2, 3, 3, 148, 180) and ratios is None


class PairCodeFlow(nn.Module):
    """Stand-in for SpyNet: frame k is constant (k + 1) / 10; the flow from ref to supp is a constant x-flow
    encoding the pair, so the flows a branch receives can be read back."""

    @staticmethod
    def code(ref: int, supp: int) -> float:
        return 0.01 * (10 * ref + supp + 1)

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        flows = []
        for r, s in zip(ref, supp):
            r_id, s_id = round(r.mean().item() * 10) - 1, round(s.mean().item() * 10) - 1
            flow = torch.zeros(2, *r.shape[-2:])
            flow[0] = self.code(r_id, s_id)
            flows.append(flow)
        return torch.stack(flows)


def test_bug_b_each_branch_gets_its_own_direction_and_pair(monkeypatch):
    t = 4
    model = IIAVSR(**TINY).eval()
    model.spynet = PairCodeFlow()
    received = []
    real_warp = mia_network.patch_flow_warp

    def recording_warp(x, flow, patch):
        received.append(round(flow[0, 0, 32, 32].item(), 5))
        return real_warp(x, flow, patch)

    monkeypatch.setattr(mia_network, 'patch_flow_warp', recording_warp)
    lqs = torch.stack([torch.full((3, 64, 64), (k + 1) / 10) for k in range(t)]).unsqueeze(0)
    with torch.no_grad():
        model(lqs)

    code = PairCodeFlow.code
    expected = []
    for branch in mia_network.BRANCHES:
        if branch.startswith('backward'):  # frame i is aligned with frame i+1 (and i+2 through i+1)
            for step, i in enumerate(range(t - 2, -1, -1)):
                expected.append(code(i, i + 1))
                if step > 0:
                    expected.append(code(i, i + 1) + code(i + 1, i + 2))
        else:  # frame i is aligned with frame i-1 (and i-2 through i-1)
            for step, i in enumerate(range(1, t)):
                expected.append(code(i, i - 1))
                if step > 0:
                    expected.append(code(i, i - 1) + code(i - 1, i - 2))
    assert received == pytest.approx(expected, abs=1e-5)
