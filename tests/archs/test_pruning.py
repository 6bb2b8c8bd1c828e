"""L1 filter pruning of VDSR: exact equivalence to the masked net, and reproduction of the published pruned file."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from vsrkit.archs.loader import standard_checkpoint
from vsrkit.archs.pruning import l1_filter_masks, prune_conv_chain
from vsrkit.archs.vdsr_arch import VDSR, vdsr_conv_chain
from basicsr.utils.color_util import rgb2ycbcr  # noqa: E402  (after vsrkit: the compat shim must come first)

SCRIPT = Path(__file__).resolve().parents[2] / 'scripts' / 'prune.py'


@pytest.fixture(scope='module')
def epoch50(reference_checkpoint) -> dict:
    return standard_checkpoint(reference_checkpoint('vdsr_model_epoch_50.pth'))


def _real_y(size: int = 40) -> torch.Tensor:
    rgb = data.astronaut()[80:80 + size, 190:190 + size].astype(np.float32) / 255.
    return torch.from_numpy(rgb2ycbcr(rgb, y_only=True)).double()[None, None]


def _masked(state_dict: dict, sparsity: float) -> dict:
    """The full network with the removed filters zeroed (nothing shrunk)."""
    chain = vdsr_conv_chain(state_dict)
    masks = l1_filter_masks([state_dict[k] for k in chain[:-1]], sparsity)
    masked = {k: v.clone() for k, v in state_dict.items()}
    for key, mask in zip(chain, masks):
        masked[key][~mask] = 0
    return masked


def _net(opts: dict, params: dict) -> VDSR:
    net = VDSR(**{k: v for k, v in opts.items() if k != 'type'}).double().eval()
    net.load_state_dict(params, strict=True)
    return net


def test_l1_filter_masks_analytic():
    w = torch.zeros(5, 2, 3, 3)
    for i, norm in enumerate([3.0, 1.0, 5.0, 1.0, 4.0]):
        w[i, 0, 0, 0] = -norm  # sign must not matter
    assert l1_filter_masks([w], 0.5)[0].tolist() == [True, False, True, False, True]  # floor(2.5) = 2 removed
    assert l1_filter_masks([w], 0.7)[0].tolist() == [False, False, True, False, True]
    assert l1_filter_masks([w], 0.8)[0].tolist() == [False, False, True, False, False]
    assert l1_filter_masks([w[[1, 3]]], 0.5)[0].tolist() == [True, False]  # a tie keeps the lower index
    with pytest.raises(ValueError, match='sparsity'):
        l1_filter_masks([w], 1.0)


def test_shrunk_equals_masked_on_uneven_net():
    torch.manual_seed(0)
    full = VDSR(num_layers=3, widths=[8, 6, 7, 5])
    pruned, widths = prune_conv_chain(full.state_dict(), 0.4)
    assert widths == [5, 4, 5, 3]  # n - floor(0.4 n)
    opts = {'num_layers': 3, 'widths': widths}
    y = _real_y(24)
    with torch.no_grad():
        masked_out = _net({'num_layers': 3, 'widths': [8, 6, 7, 5]}, _masked(full.state_dict(), 0.4))(y)
        torch.testing.assert_close(_net(opts, pruned)(y), masked_out, rtol=0, atol=1e-6)


def test_epoch50_pruned_equals_masked_and_published(epoch50, reference_checkpoint):
    pruned, widths = prune_conv_chain(epoch50['params'], 0.5)
    assert widths == [32] * 19
    opts = {'num_channels': 64, 'num_layers': 18, 'widths': widths}
    y = _real_y()
    with torch.no_grad():
        shrunk_out = _net(opts, pruned)(y)
        masked_out = _net(epoch50['network_g'], _masked(epoch50['params'], 0.5))(y)
    torch.testing.assert_close(shrunk_out, masked_out, rtol=0, atol=1e-6)
    assert (shrunk_out - y).abs().max() > 1e-3  # the comparison is not trivially between two identities

    # NNI's L1NormPruner + ModelSpeedup (the published pruning) kept exactly the same filters, bit for bit.
    published = standard_checkpoint(reference_checkpoint('vdsr_l1_pruned_no_finetune.pth'))
    assert list(pruned) == list(published['params'])
    for key, tensor in published['params'].items():
        assert torch.equal(pruned[key], tensor), key
    assert sum(v.numel() for v in pruned.values()) == 166_464


def test_prune_script(epoch50, reference_checkpoint, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location('prune_script', SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    dst = tmp_path / 'vdsr_l1_0.5.pth'
    args = ['--model', str(reference_checkpoint('vdsr_model_epoch_50.pth')), '--sparsity', '0.5', '--output', str(dst)]
    assert script.main(args) == 0
    saved = torch.load(dst, map_location='cpu', weights_only=True)
    assert saved['network_g'] == {'type': 'VDSR', 'num_channels': 32, 'num_layers': 18, 'widths': [32] * 19}
    net = VDSR(**{k: v for k, v in saved['network_g'].items() if k != 'type'})
    net.load_state_dict(saved['params'], strict=True)
    assert script.main(args) == 1 and 'exists' in capsys.readouterr().err
    # A second pass prunes the already pruned (converted) checkpoint further.
    assert script.main(['--model', str(dst), '--sparsity', '0.25', '--output', str(tmp_path / 'again.pth')]) == 0
    again = torch.load(tmp_path / 'again.pth', map_location='cpu', weights_only=True)
    assert again['network_g']['widths'] == [24] * 19
