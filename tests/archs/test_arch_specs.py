"""Every architecture spec (vsrkit's beside each class, basicsr's in archs/basicsr_specs.py): a freshly saved
random-weight checkpoint built with non-default hyper-parameters is recognised by exactly one spec, the inferred
hyper-parameters equal the constructor's, and the generic loader rebuilds it and loads it strictly with the same
weights; how each is fed (ModelIO); the ESRGAN remap."""
import pytest
import torch

import vsrkit.archs  # noqa: F401
from basicsr.archs.basicvsr_arch import BasicVSR, IconVSR
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.edvr_arch import EDVR
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.srresnet_arch import MSRResNet
from basicsr.archs.srvgg_arch import SRVGGNetCompact
from basicsr.archs.swinir_arch import SwinIR
from vsrkit.archs.convlstm_arch import ConvLSTM
from vsrkit.archs.elsr_arch import ELSR
from vsrkit.archs.grey2rgb_arch import GREY2RGB_RELEASES, Grey2RGBAutoEncoder
from vsrkit.archs.iiavsr_arch import IIAVSR
from vsrkit.archs.loader import check_state_dict_fits, detect_architecture, load_model
from vsrkit.archs.miavsr_arch import MIAVSR
from vsrkit.archs.spec import ARCH_SPECS, ModelIO, matching_specs
from vsrkit.archs.vdsr_arch import VDSR
from vsrkit.archs.vit_arch import ViTSR

MIA_TINY = dict(in_channels=3, mid_channels=8, embed_dim=12, depths=[2, 1], num_heads=[2, 3], window_size=[3, 4, 4],
                mlp_ratio=1.5)
SWIN = dict(in_chans=3, embed_dim=12, depths=[2, 1], num_heads=[2, 3], window_size=4, mlp_ratio=2.0, img_size=16,
            patch_norm=True, ape=False, qkv_bias=True, resi_connection='1conv')

# case -> (class, constructor options: every one of them must be inferred back from the shapes, expected ModelIO)
CASES = {
    'ViTSR-untied': (ViTSR, dict(in_chans=3, embed_dim=24, depth=3, mlp_dim=40, scale=3, share_weights=False),
                     ModelIO('frame', 'rgb', 3, 3, 3, cost='global', amx_dtype='bf16')),
    'ViTSR-tied-grey': (ViTSR, dict(in_chans=1, embed_dim=16, depth=2, mlp_dim=24, scale=2, share_weights=True),
                        ModelIO('frame', 'grey', 1, 1, 2, cost='global', amx_dtype='bf16')),
    'ELSR': (ELSR, dict(scale=3, in_channels=3, num_feat=5), ModelIO('frame', 'rgb', 3, 3, 3)),
    'VDSR-pruned': (VDSR, dict(num_channels=9, num_layers=4, widths=[8, 6, 7, 5, 9]),
                    ModelIO('frame', 'y_bicubic', 1, 1, 1, amx_dtype='bf16')),
    'Grey2RGB-v3': (Grey2RGBAutoEncoder, {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in GREY2RGB_RELEASES['v3.0'].items()}, ModelIO('frame', 'grey', 1, 3, 1)),
    'Grey2RGB-head': (Grey2RGBAutoEncoder, {k: list(v) if isinstance(v, tuple) else v
                                            for k, v in GREY2RGB_RELEASES['head'].items()},
                      ModelIO('frame', 'grey', 1, 3, 1)),
    'ConvLSTM-stacked': (ConvLSTM, dict(input_dim=2, hidden_dims=[3, 4], num_layers=2, kernel_size=[5, 5],
                                        stack_layers=True), ModelIO('clip', 'grey', 2, 4, 1)),
    'MIAVSR': (MIAVSR, MIA_TINY, ModelIO('clip', 'rgb', 3, 3, 4, amx_dtype='bf16')),
    'IIAVSR': (IIAVSR, MIA_TINY, ModelIO('clip', 'rgb', 3, 3, 4, amx_dtype='bf16')),
    'MSRResNet-x3': (MSRResNet, dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, upscale=3),
                     ModelIO('frame', 'rgb', 3, 3, 3)),
    'MSRResNet-x4': (MSRResNet, dict(num_in_ch=1, num_out_ch=1, num_feat=8, num_block=1, upscale=4),
                     ModelIO('frame', 'grey', 1, 1, 4)),
    'EDSR-x2': (EDSR, dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, upscale=2),
                ModelIO('frame', 'rgb', 3, 3, 2)),
    'EDSR-x3': (EDSR, dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=3),
                ModelIO('frame', 'rgb', 3, 3, 3)),
    'RRDBNet-x4': (RRDBNet, dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=8, num_block=2, num_grow_ch=4),
                   ModelIO('frame', 'rgb', 3, 3, 4)),
    'RRDBNet-x2': (RRDBNet, dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=8, num_block=1, num_grow_ch=4),
                   ModelIO('frame', 'rgb', 3, 3, 2, multiple=2)),
    'SRVGGNetCompact-prelu': (SRVGGNetCompact, dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=3, upscale=3,
                                                    act_type='prelu'), ModelIO('frame', 'rgb', 3, 3, 3)),
    'SRVGGNetCompact-relu': (SRVGGNetCompact, dict(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=2, upscale=2,
                                                   act_type='relu'), ModelIO('frame', 'grey', 1, 1, 2)),
    'SwinIR-pixelshuffle': (SwinIR, dict(SWIN, upscale=2, upsampler='pixelshuffle'),
                            ModelIO('frame', 'rgb', 3, 3, 2, multiple=4, train_size=16, dtypes=('bf16',))),
    'SwinIR-direct-3conv': (SwinIR, dict(SWIN, in_chans=1, img_size=8, depths=[2], num_heads=[2], upscale=3,
                                         upsampler='pixelshuffledirect', resi_connection='3conv', patch_norm=False),
                            ModelIO('frame', 'grey', 1, 1, 3, multiple=4, train_size=8, dtypes=('bf16',))),
    'SwinIR-nearest': (SwinIR, dict(SWIN, upscale=4, upsampler='nearest+conv', qkv_bias=False),
                       ModelIO('frame', 'rgb', 3, 3, 4, multiple=4, train_size=16, dtypes=('bf16',))),
    'SwinIR-denoise-ape': (SwinIR, dict(SWIN, img_size=8, window_size=8, depths=[2], num_heads=[2], upscale=1,
                                        upsampler='', ape=True), ModelIO('frame', 'rgb', 3, 3, 1, multiple=8,
                                                                         train_size=8, dtypes=('bf16',))),
    'BasicVSR': (BasicVSR, dict(num_feat=8, num_block=2), ModelIO('clip', 'rgb', 3, 3, 4, min_size=64)),
    'IconVSR': (IconVSR, dict(num_feat=8, num_block=1, temporal_padding=2),
                ModelIO('clip', 'rgb', 3, 3, 4, multiple=4, min_size=64)),
    'EDVR': (EDVR, dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_frame=3, deformable_groups=2, num_extract_block=1,
                        num_reconstruct_block=2, with_tsa=False, with_predeblur=False, hr_in=False),
             ModelIO('window', 'rgb', 3, 3, 4, multiple=4, window=3)),
    'EDVR-predeblur-hr': (EDVR, dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_frame=5, deformable_groups=1,
                                     num_extract_block=2, num_reconstruct_block=1, with_tsa=True, with_predeblur=True,
                                     hr_in=True), ModelIO('window', 'rgb', 3, 3, 1, multiple=16, window=5)),
}


def _spec_name(case: str) -> str:
    return CASES[case][0].__name__


def test_every_spec_is_covered():
    assert {_spec_name(case) for case in CASES} == set(ARCH_SPECS)
    assert {'MSRResNet', 'EDSR', 'RRDBNet', 'SRVGGNetCompact', 'SwinIR', 'BasicVSR', 'IconVSR', 'EDVR', 'ViTSR', 'ELSR',
            'VDSR', 'Grey2RGBAutoEncoder', 'ConvLSTM', 'MIAVSR', 'IIAVSR'} <= set(ARCH_SPECS)


@pytest.mark.parametrize('case', list(CASES))
def test_fresh_checkpoint_detected_inferred_and_loaded_strictly(case, tmp_path):
    cls, options, io = CASES[case]
    torch.manual_seed(0)
    net = cls(**options).eval()
    state = net.state_dict()
    # Exactly one spec fits: the signatures exclude each other (no first-match order to depend on).
    assert [spec.name for spec in matching_specs(state)] == [cls.__name__]
    path = tmp_path / 'net.pth'
    torch.save({'params': state}, path)
    name, inferred = detect_architecture(path)
    assert name == cls.__name__
    assert {k: inferred.get(k) for k in options} == options
    loaded, info = load_model(path)
    assert type(loaded) is cls and info['arch'] == cls.__name__ and info['source'] == 'shapes'
    assert info['io'] == io
    loaded_state = loaded.state_dict()
    assert list(loaded_state) == list(state)
    for key, value in state.items():
        assert torch.equal(loaded_state[key], value), key


def test_esrgan_original_names_are_remapped(tmp_path):
    """RRDB_ESRGAN_x4.pth names (xinntao/ESRGAN's RRDBNet_arch.py) load into basicsr's RRDBNet."""
    torch.manual_seed(0)
    net = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, num_grow_ch=4)
    ours = net.state_dict()
    original = {}
    for key, value in ours.items():  # ESRGAN's names, written out as its module defines them
        head, rest = key.split('.', 1)
        if head == 'body':
            block, rdb, conv = rest.split('.', 2)
            original[f'RRDB_trunk.{block}.RDB{rdb[-1]}.{conv}'] = value
        else:
            original[{'conv_body': 'trunk_conv', 'conv_up1': 'upconv1', 'conv_up2': 'upconv2',
                      'conv_hr': 'HRconv'}.get(head, head) + '.' + rest] = value
    assert 'RRDB_trunk.1.RDB3.conv5.weight' in original and 'HRconv.bias' in original
    torch.save(original, tmp_path / 'RRDB_ESRGAN_x4.pth')
    loaded, info = load_model(tmp_path / 'RRDB_ESRGAN_x4.pth')
    assert info['arch'] == 'RRDBNet' and info['options']['num_block'] == 2
    for key, value in ours.items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_mia_and_iia_published_key_lists(reference_keys):
    """The published REDS checkpoints' keys and shapes (meta tensors, no data): detected, options inferred, and
    the network built with them takes every key and shape strictly (IIA-VSR: MIA-VSR's without the mask
    predictor, so one build shows both)."""
    expected = dict(in_channels=3, mid_channels=64, embed_dim=120, depths=[6, 6, 6, 6], num_heads=[6, 6, 6, 6],
                    window_size=[3, 8, 8], mlp_ratio=2.0)
    states = {}
    for keys, cls in (('miavsr_reds', MIAVSR), ('iiavsr_reds', IIAVSR)):
        states[cls] = {k: torch.empty(shape, dtype=getattr(torch, d), device='meta')
                       for k, shape, d in reference_keys(keys)}
        name, options = detect_architecture({'params': states[cls]})
        assert name == cls.__name__ and options == expected
    net = MIAVSR(**expected)
    assert check_state_dict_fits(net, states[MIAVSR]) == []
    mask_keys = [k for k in states[MIAVSR] if '.predmask.' in k]
    assert mask_keys and check_state_dict_fits(net, states[IIAVSR]) == [
        f'missing {k} {list(states[MIAVSR][k].shape)}' for k in mask_keys]


def test_a_second_spec_under_a_taken_name_is_refused():
    from vsrkit.archs.spec import ArchSpec, register_spec
    with pytest.raises(ValueError, match="spec for 'VDSR' is already registered by vsrkit.archs.vdsr_arch"):
        register_spec(ArchSpec('VDSR', present=('x',), infer=lambda s: {}, io=lambda o: ModelIO('frame', 'rgb', 3, 3, 1)))
    assert ARCH_SPECS['VDSR'].present == ('input.weight', 'residual_layer.0.conv.weight', 'output.weight')


def photo_input(io: ModelIO, size: int, clip: int = 3) -> torch.Tensor:
    """A real input of ``size`` pixels for a network fed as ``io`` says: crops of scikit-image's astronaut photo
    (shifted a few pixels per frame; ``clip`` frames for a recurrent network), its first ``in_channels`` channels
    or its grey."""
    from skimage import data
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    photo = torch.nn.functional.interpolate(photo[None], size=(4 * size, 4 * size), mode='area')[0]
    channels = photo.mean(0, keepdim=True) if io.in_channels == 1 else photo[:io.in_channels]
    frames = {'frame': 1, 'window': io.window, 'clip': clip}[io.temporal]
    crops = torch.stack([channels[:, size + 2 * i:2 * size + 2 * i, size + 3 * i:2 * size + 3 * i]
                         for i in range(frames)])
    return crops if io.temporal == 'frame' else crops[None]


@pytest.mark.parametrize('case', list(CASES))
def test_cuda_computes_what_the_cpu_computes(case, cuda):
    """Every architecture's fp32 forward on CUDA (TF32 off) gives its CPU output, on real frames."""
    cls, options, io = CASES[case]
    clip = 5 if cls is IconVSR else 3  # IconVSR's keyframe padding reads frames 3 and 4
    torch.manual_seed(0)
    net = cls(**options).eval()
    if hasattr(net, 'use_mask'):  # a hard keep decision at logit ~ 0 flips under reordering; the mask path on
        net.use_mask = False      # CUDA: test_mia_originals_parity (decisions forced equal)
    size = -(-max(io.min_size, io.train_size or 16) // io.multiple) * io.multiple
    x = photo_input(io, size, clip)
    with torch.no_grad():
        expected = net(x)
        out = net.to(cuda)(x.to(cuda))
    if isinstance(expected, tuple):  # ConvLSTM: (frames, state)
        expected, out = expected[0], out[0]
    assert out.device.type == 'cuda' and expected.std() > 1e-3  # not a constant picture
    assert (out.cpu() - expected).abs().max().item() <= 1e-4 * max(1.0, expected.abs().max().item())


def test_iconvsr_checkpoint_basicsr_cannot_run_is_refused(tmp_path):
    """basicsr's IconVSR builds with temporal_padding 1 but fails in its first forward: such a checkpoint is refused
    when it is detected, with the key and what was expected."""
    torch.manual_seed(0)
    path = tmp_path / 'iconvsr.pth'
    torch.save({'params': IconVSR(num_feat=8, num_block=1, temporal_padding=1).state_dict()}, path)
    with pytest.raises(ValueError, match=r'looks like IconVSR .*edvr\.fusion\.feat_fusion\.weight fuses 3 frames; '
                                         r"basicsr's IconVSR runs with 5 or 7"):
        detect_architecture(path)
