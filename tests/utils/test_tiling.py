"""Blended tiles reproduce the whole-frame result on a real photo (local network exactly, ViT closely)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from vsrkit.archs.vit_arch import ViTSR
from vsrkit.utils.tiling import pad_to_multiple, tiled_forward

from analytic_nets import blend_tiles


@pytest.fixture(scope='module')
def photo():
    return torch.from_numpy(data.coffee()[:90, :130]).permute(2, 0, 1)[None].float() / 255


def psnr(a, b):
    return float(10 * torch.log10(1 / F.mse_loss(a, b)))


def test_tiles_match_the_whole_frame_for_a_local_network(photo):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(12, 12, 3, padding=1),
                              torch.nn.PixelShuffle(2)).eval()
    with torch.no_grad():
        whole = net(photo)
        tiled = tiled_forward(net, photo, scale=2, tile=40, overlap=8)
    assert tiled.shape == whole.shape
    inner = (..., slice(8, -8), slice(8, -8))  # receptive field 2: tile borders differ only within the blend ramps
    assert psnr(tiled[inner], whole[inner]) > 55  # reflect-padded tile edges enter only at low blend weight


def test_vit_tiles_blend_like_hand_built_ramps(photo):
    """Global attention: tiles cannot reproduce the whole frame, but the tiled output is exactly the network's
    per-tile outputs blended with linear ramps (built here, analytic_nets.blend_tiles), a plain average is not, and
    the result stays within a tenth of a dB of the whole frame."""
    torch.manual_seed(0)
    net = ViTSR(embed_dim=32, num_heads=2, depth=2, mlp_dim=64, residual='bicubic').eval()
    torch.nn.init.normal_(net.upsample[2].weight, std=0.02)  # a non-trivial residual
    hr = F.interpolate(photo, scale_factor=2, mode='bicubic').clamp(0, 1)
    with torch.no_grad():
        whole, tiled = net(photo), tiled_forward(net, photo, scale=2, tile=48, overlap=12, multiple=8)

        def per_tile(image):
            return net(torch.from_numpy(image).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).double().numpy()

        expected = blend_tiles(per_tile, photo[0].permute(1, 2, 0).double().numpy(), 2, tile=48, overlap=12)
    np.testing.assert_allclose(tiled[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert abs(psnr(tiled, hr) - psnr(whole, hr)) < 0.1


def test_pad_to_multiple_and_odd_sizes(photo):
    padded, ph, pw = pad_to_multiple(photo[..., :37, :45], 8)
    assert padded.shape[-2:] == (40, 48) and (ph, pw) == (3, 3)
    out = tiled_forward(lambda x: F.interpolate(x, scale_factor=2), photo[..., :37, :45], 2, tile=16, overlap=4, multiple=8)
    torch.testing.assert_close(out, F.interpolate(photo[..., :37, :45], scale_factor=2))
    with pytest.raises(ValueError, match='overlap'):
        tiled_forward(lambda x: x, photo, 1, tile=8, overlap=8)
