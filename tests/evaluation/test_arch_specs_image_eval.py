"""Image evaluation (eval_images.py) feeds any network by its spec's ModelIO, no probe calls: SwinIR on a photo
whose sides are not multiples of its window (padded, cropped back), a grey network (only Y changes), a registered
architecture without a spec named by --arch, and a clip network refused in one line."""
import cv2
import numpy as np
import pytest
import skimage
import torch
from torch import nn

import vsrkit.archs  # noqa: F401
from basicsr.archs.basicvsr_arch import BasicVSR
from basicsr.archs.srresnet_arch import MSRResNet
from basicsr.archs.swinir_arch import SwinIR
from vsrkit.archs.loader import load_model
from vsrkit.evaluation.image_protocol import super_resolve
from vsrkit.inference_scripts.eval_images import main as eval_main
from vsrkit.utils.color import bicubic_downscale, bicubic_upscale
from vsrkit.utils.registry import ARCH_REGISTRY, register


@register(ARCH_REGISTRY)
class SpeclessImageTestNet(nn.Module):
    """Registered without a spec: x upscale by PixelShuffle, 3 channels (read from its convolutions)."""

    def __init__(self, width: int = 4, upscale: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.Conv2d(width, 3 * upscale ** 2, 3, padding=1),
                                  nn.PixelShuffle(upscale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope='module')
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('photos')
    # 70 x 54 GT -> 35 x 27 LR at x2: neither side a multiple of SwinIR's 4-pixel window.
    cv2.imwrite(str(folder / 'astronaut.png'), cv2.cvtColor(skimage.data.astronaut()[40:110, 190:244],
                                                              cv2.COLOR_RGB2BGR))
    return folder


def _save(net: nn.Module, path):
    torch.manual_seed(0)
    torch.save({'params': net.state_dict()}, path)
    return path


def test_swinir_is_padded_to_its_window(photo_dir, tmp_path, capsys):
    torch.manual_seed(0)
    net = SwinIR(img_size=8, in_chans=3, embed_dim=8, depths=[2], num_heads=[2], window_size=4, upscale=2,
                 upsampler='pixelshuffledirect')
    path = _save(net, tmp_path / 'swinir.pth')
    with pytest.raises(RuntimeError):  # as basicsr builds it, SwinIR cannot take a 35 x 27 frame
        net(torch.rand(1, 3, 27, 35))
    assert eval_main(['--model', str(path), '--input', str(photo_dir), '--scale', '2', '--device', 'cpu']) == 0
    out = capsys.readouterr().out
    assert 'SwinIR (rgb input) x2' in out and 'astronaut' in out


def test_grey_network_changes_only_luma(photo_dir, tmp_path):
    net = MSRResNet(num_in_ch=1, num_out_ch=1, num_feat=8, num_block=1, upscale=2)
    with torch.no_grad():
        net.conv_last.bias.fill_(0.05)  # random MSRResNet weights stay near their bilinear skip: brighten Y
    loaded, info = load_model(_save(net, tmp_path / 'grey.pth'))
    assert info['io'].color == 'grey'
    gt = cv2.imread(str(photo_dir / 'astronaut.png'))
    lr = bicubic_downscale(gt, 2)
    sr = super_resolve(loaded, info['io'], lr, 2)
    bicubic = np.clip(np.round(bicubic_upscale(lr.astype(np.float64) / 255.0, 2) * 255), 0, 255).astype(np.uint8)
    ycc_sr = skimage.color.rgb2ycbcr(sr[..., ::-1])
    ycc_bicubic = skimage.color.rgb2ycbcr(bicubic[..., ::-1])
    assert sr.shape == bicubic.shape == (70, 54, 3)
    # Cb / Cr are the bicubic upscale's (up to uint8 rounding of the recombined image, where no channel clipped);
    # Y is the network's: brighter by about its bias (0.05 x 219 levels).
    unclipped = (sr > 0).all(-1) & (sr < 255).all(-1) & (bicubic > 0).all(-1) & (bicubic < 255).all(-1)
    assert unclipped.mean() > 0.9
    assert np.abs(ycc_sr[..., 1:] - ycc_bicubic[..., 1:])[unclipped].max() < 2.5
    assert 8 < (ycc_sr[..., 0] - ycc_bicubic[..., 0])[unclipped].mean() < 14


def test_registered_arch_without_spec_by_name(photo_dir, tmp_path, capsys):
    path = _save(SpeclessImageTestNet(width=5), tmp_path / 'specless.pth')
    assert eval_main(['--model', str(path), '--input', str(photo_dir), '--scale', '2',
                      '--arch', 'SpeclessImageTestNet']) == 1  # width 4 by default: one line listing the misfits
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'body.0.weight: [5, 3, 3, 3] in the checkpoint, [4, 3, 3, 3] in the network' in err
    opt = tmp_path / 'opt.yml'
    opt.write_text('network_g:\n  type: SpeclessImageTestNet\n  width: 5\n')
    assert eval_main(['--model', str(path), '--input', str(photo_dir), '--scale', '2', '--opt', str(opt)]) == 0
    assert 'SpeclessImageTestNet (rgb input) x2' in capsys.readouterr().out
    assert eval_main(['--model', str(path), '--input', str(photo_dir), '--scale', '3', '--opt', str(opt)]) == 1
    assert 'upscales x2, not x3 (--scale)' in capsys.readouterr().err


def test_clip_network_is_refused_in_one_line(photo_dir, tmp_path, capsys):
    path = _save(BasicVSR(num_feat=8, num_block=1), tmp_path / 'basicvsr.pth')
    assert eval_main(['--model', str(path), '--input', str(photo_dir), '--scale', '4']) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'recurrent clip' in err and 'needs a single-frame network' in err
