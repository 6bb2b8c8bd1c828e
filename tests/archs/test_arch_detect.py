"""The generic loader (vsrkit.archs.loader): detection through params / params_ema / module. wrappers, network_g
precedence and overrides, strict loading with one message listing every problem, the refusal of an unrecognised
checkpoint, registered architectures without a spec, pretrain_network_g, checkpoints written by vsrkit's own
training loop, and the published checkpoints. Per-architecture detection: tests/archs/test_arch_specs.py."""
import pytest
import torch
import yaml
from torch import nn

import vsrkit.archs  # noqa: F401
from basicsr.archs.srresnet_arch import MSRResNet
from vsrkit.archs.elsr_arch import ELSR
from vsrkit.archs.loader import check_state_dict_fits, detect_architecture, load_model, model_io
from vsrkit.archs.spec import ARCH_SPECS, ModelIO
from vsrkit.archs.vit_arch import ViTSR
from vsrkit.models.image_sr_model import ImageSRModel
from vsrkit.utils.registry import ARCH_REGISTRY, register

WRAPPERS = {
    'plain': lambda sd: sd,
    'params': lambda sd: {'params': sd},
    'params_ema': lambda sd: {'params_ema': sd, 'params': {k: torch.zeros_like(v) for k, v in sd.items()}},
    'module': lambda sd: {'params': {f'module.{k}': v for k, v in sd.items()}},
}


@register(ARCH_REGISTRY)
class SpeclessTestNet(nn.Module):
    """A registered architecture without a spec and without channel options (channels from its convolutions)."""

    def __init__(self, width: int = 4, upscale: int = 2) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.tail = nn.Conv2d(width, 3 * upscale ** 2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.tail(self.head(x)))


@pytest.mark.parametrize('wrapper', list(WRAPPERS))
def test_detects_through_the_checkpoint_wrappers(wrapper, tmp_path):
    torch.manual_seed(0)
    net = ELSR(scale=3, num_feat=5)
    torch.save(WRAPPERS[wrapper](net.state_dict()), tmp_path / 'elsr.pth')
    name, options = detect_architecture(tmp_path / 'elsr.pth')
    assert name == 'ELSR' and options == {'in_channels': 3, 'num_feat': 5, 'scale': 3}
    loaded, info = load_model(tmp_path / 'elsr.pth')
    assert info == {'arch': 'ELSR', 'options': options, 'io': ModelIO('frame', 'rgb', 3, 3, 3), 'source': 'shapes'}
    for key, value in net.state_dict().items():  # params_ema preferred over the zeroed params
        assert torch.equal(loaded.state_dict()[key], value), key


def test_tied_vit_loads_as_one_shared_layer(tmp_path):
    net = ViTSR(embed_dim=16, num_heads=2, depth=3, mlp_dim=24)
    torch.save(net.state_dict(), tmp_path / 'vit.pth')
    loaded, _ = load_model(tmp_path / 'vit.pth')
    layers = loaded.transformer.layers
    assert layers[0] is layers[2] and sum(p.numel() for p in loaded.parameters()) == sum(
        p.numel() for p in net.parameters())


def test_network_g_wins_and_explicit_options_override(tmp_path):
    net = ViTSR(embed_dim=16, num_heads=2, depth=2, mlp_dim=24, window_size=4)
    path = tmp_path / 'ckpt.pth'
    torch.save({'params': net.state_dict(), 'network_g': {'type': 'ViTSR', 'num_heads': 2, 'window_size': 4}}, path)
    name, options = detect_architecture(path)
    assert name == 'ViTSR' and options['window_size'] == 4 and options['num_heads'] == 2 and options['depth'] == 2
    loaded, info = load_model(path)
    assert loaded.window_size == 4 and info['source'] == 'network_g' and info['io'].cost == 'local'
    opt = tmp_path / 'opt.yml'
    opt.write_text(yaml.safe_dump({'network_g': {'type': 'ViTSR', 'window_size': 8, 'num_heads': 2}}))
    loaded, info = load_model(path, options=opt)
    assert loaded.window_size == 8 and info['options']['embed_dim'] == 16 and info['source'] == 'options'
    loaded, info = load_model(path, options={'window_size': None})
    assert loaded.window_size is None and info['io'].cost == 'global'  # global attention: quadratic in pixels


def test_explicit_arch_that_does_not_fit_is_a_clear_error(tmp_path):
    """Strict loading: an ELSR checkpoint named as VDSR must fail (a non-strict load would 'succeed' loading
    nothing), naming every key at fault and what the keys look like."""
    torch.save(ELSR(scale=2).state_dict(), tmp_path / 'elsr.pth')
    with pytest.raises(ValueError, match='cannot load as VDSR') as err:
        load_model(tmp_path / 'elsr.pth', arch='VDSR')
    message = str(err.value)
    assert '(its keys look like ELSR)' in message and 'missing input.weight [64, 1, 3, 3]' in message
    assert 'unexpected layer1.weight [6, 3, 3, 3]' in message and '\n' not in message
    with pytest.raises(KeyError, match='unknown architecture'):
        load_model(tmp_path / 'elsr.pth', arch='NoSuchNet')
    with pytest.raises(ValueError, match=r"ELSR: unknown option\(s\) \['depth'\]"):
        load_model(tmp_path / 'elsr.pth', options={'depth': 3})


def test_one_extra_or_missing_key_fails_the_strict_load(tmp_path):
    state = ELSR(scale=2).state_dict()
    torch.save({**state, 'extra.weight': torch.zeros(1)}, tmp_path / 'extra.pth')
    with pytest.raises(ValueError, match=r'1 problems\): unexpected extra.weight \[1\]$'):
        load_model(tmp_path / 'extra.pth')
    torch.save({k: v for k, v in state.items() if k != 'layer2_4.conv2.bias'}, tmp_path / 'missing.pth')
    with pytest.raises(ValueError, match=r'1 problems\): missing layer2_4.conv2.bias \[6\]$'):
        load_model(tmp_path / 'missing.pth')


def test_wrong_scale_lists_every_mismatch_in_one_message(tmp_path):
    """`--arch MSRResNet --opt upscale=3` on a x4 checkpoint: one message, every key that does not fit."""
    net = MSRResNet(num_feat=8, num_block=1, upscale=4)
    torch.save({'params': net.state_dict()}, tmp_path / 'x4.pth')
    problems = ['unexpected upconv2.weight [32, 8, 3, 3]', 'unexpected upconv2.bias [32]',
                'upconv1.weight: [32, 8, 3, 3] in the checkpoint, [72, 8, 3, 3] in the network',
                'upconv1.bias: [32] in the checkpoint, [72] in the network']
    assert check_state_dict_fits(MSRResNet(num_feat=8, num_block=1, upscale=3), net.state_dict()) == problems
    with pytest.raises(ValueError) as err:
        load_model(tmp_path / 'x4.pth', options={'type': 'MSRResNet', 'upscale': 3})
    message = str(err.value)
    assert message.startswith(f'{tmp_path / "x4.pth"}: cannot load as MSRResNet(')
    assert message.endswith('(4 problems): ' + '; '.join(problems)) and '\n' not in message


def test_unrecognised_checkpoint_lists_what_can_be_recognised(tmp_path):
    torch.save({'params': torch.nn.Linear(3, 4).state_dict()}, tmp_path / 'linear.pth')
    with pytest.raises(ValueError, match='unrecognised architecture') as err:
        load_model(tmp_path / 'linear.pth')
    message = str(err.value)
    assert 'linear.pth' in message and 'weight, bias' in message and '--arch' in message
    assert message.count('\n') == 0
    for name in ARCH_SPECS:
        assert name in message
    assert {'MSRResNet', 'EDSR', 'RRDBNet', 'SRVGGNetCompact', 'SwinIR', 'BasicVSR', 'IconVSR', 'EDVR'} <= set(
        ARCH_SPECS)


def test_registered_arch_without_spec_gets_the_single_frame_default(tmp_path):
    torch.manual_seed(0)
    net = SpeclessTestNet(width=5, upscale=3)
    torch.save({'params': net.state_dict()}, tmp_path / 'specless.pth')
    with pytest.raises(ValueError, match='unrecognised architecture'):
        load_model(tmp_path / 'specless.pth')
    loaded, info = load_model(tmp_path / 'specless.pth', arch='SpeclessTestNet', options={'width': 5, 'upscale': 3})
    # Channels from the first / last convolution (none in the options; 3·3² into the PixelShuffle: 3 out), scale
    # from the 'upscale' option.
    assert info['io'] == ModelIO('frame', 'rgb', 3, 3, 3)
    assert model_io('SpeclessTestNet', {}) == ModelIO('frame', 'rgb', 3, 3, 2)  # constructor defaults
    # Options that name the channels win over the convolutions.
    assert model_io('RCAN', {'num_in_ch': 1, 'num_out_ch': 1, 'num_feat': 8, 'num_group': 1, 'num_block': 1,
                             'upscale': 2, 'rgb_mean': [0.5]}) == ModelIO('frame', 'grey', 1, 1, 2)
    x = torch.rand(1, 3, 4, 4)
    assert torch.equal(loaded(x), net(x))


def test_msrresnet_trained_by_vsrkits_loop_loads_without_flags(tmp_path):
    """A checkpoint written by models/base.py's save (params, params_ema, network_g) of a basicsr network."""
    network_g = {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2, 'upscale': 2}
    model = ImageSRModel({'is_train': True, 'device': 'cpu', 'scale': 2, 'network_g': network_g,
                          'path': {'models': str(tmp_path)},
                          'train': {'optim_g': {'type': 'SGD', 'lr': 0.1}, 'pixel_opt': {'type': 'L1Loss'},
                                    'ema_decay': 0.5}})
    with torch.no_grad():
        for p in model.net_g_ema.parameters():
            p.add_(1.0)  # EMA weights that differ from params, to see which are loaded
    model.save(0, -1)
    saved = torch.load(tmp_path / 'net_g_latest.pth', weights_only=True)
    assert set(saved) == {'params', 'params_ema', 'network_g'}
    net, info = load_model(tmp_path / 'net_g_latest.pth')
    assert info['arch'] == 'MSRResNet' and info['source'] == 'network_g'
    assert info['io'] == ModelIO('frame', 'rgb', 3, 3, 2)
    for key, value in model.net_g_ema.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


def _pretrain_options(path, strict: bool) -> dict:
    return {'device': 'cpu', 'scale': 2, 'path': {'pretrain_network_g': str(path), 'strict_load_g': strict},
            'network_g': {'type': 'MSRResNet', 'num_feat': 8, 'num_block': 2, 'upscale': 2}}


def test_pretrain_network_g_goes_through_the_loader(tmp_path):
    torch.manual_seed(0)
    x4 = MSRResNet(num_feat=8, num_block=2, upscale=4)
    torch.save({'params': x4.state_dict()}, tmp_path / 'x4.pth')
    with pytest.raises(ValueError, match=r'path.pretrain_network_g .*x4.pth does not fit MSRResNet \(2 problems\): '
                                         r'unexpected upconv2.weight \[32, 8, 3, 3\]; unexpected upconv2.bias'):
        ImageSRModel(_pretrain_options(tmp_path / 'x4.pth', strict=True))
    model = ImageSRModel(_pretrain_options(tmp_path / 'x4.pth', strict=False))  # BasicSR: all but the new head
    assert torch.equal(model.net_g.conv_first.weight, x4.conv_first.weight)
    assert torch.equal(model.net_g.body[1].conv2.weight, x4.body[1].conv2.weight)
    x2 = MSRResNet(num_feat=8, num_block=2, upscale=2)
    torch.save({'params_ema': x2.state_dict()}, tmp_path / 'x2.pth')
    model = ImageSRModel(_pretrain_options(tmp_path / 'x2.pth', strict=True))
    for key, value in x2.state_dict().items():
        assert torch.equal(model.net_g.state_dict()[key], value), key


@pytest.mark.parametrize('file, arch, expected', [
    ('vit_x2_seed_best_model.pth', 'ViTSR',
     dict(embed_dim=128, depth=4, mlp_dim=512, scale=2, share_weights=True, in_chans=3)),
    ('elsr_best_X2_model.pth', 'ELSR', dict(scale=2, num_feat=6)),
    ('elsr_best_X4_model.pth', 'ELSR', dict(scale=4, num_feat=6)),
    ('vdsr_model_epoch_50.pth', 'VDSR', dict(num_layers=18, widths=[64] * 19)),
    ('vdsr_l1_pruned_no_finetune.pth', 'VDSR', dict(num_layers=18, widths=[32] * 19)),
])
def test_published_checkpoints(reference_checkpoint, file, arch, expected):
    path = reference_checkpoint(file)
    name, options = detect_architecture(path)
    assert name == arch and {k: options[k] for k in expected} == expected
    net, info = load_model(path)
    assert info['arch'] == arch
    if arch == 'ViTSR':
        assert sum(p.numel() for p in net.parameters()) == 215_776  # tied: NOTES §1
        assert info['io'] == ModelIO('frame', 'rgb', 3, 3, 2, cost='global', amx_dtype='bf16')
    if arch == 'VDSR':
        assert info['io'] == ModelIO('frame', 'y_bicubic', 1, 1, 1, amx_dtype='bf16')
    if file.startswith('vdsr_l1'):
        assert sum(p.numel() for p in net.parameters()) == 166_464  # NOTES §5


@pytest.mark.parametrize('keys, arch', [
    ('grey2rgb_autoencoder_v3', 'Grey2RGBAutoEncoder'), ('grey2rgb_autoencoder_head', 'Grey2RGBAutoEncoder'),
    ('convlstm_v3', 'ConvLSTM'), ('vit_x2_seed', 'ViTSR'), ('elsr_x4', 'ELSR'), ('vdsr_l1_pruned', 'VDSR'),
])
def test_published_key_lists_load_strictly(reference_keys, tmp_path, keys, arch):
    state = {k: torch.zeros(shape, dtype=getattr(torch, d)) for k, shape, d in reference_keys(keys)}
    torch.save({'params': state}, tmp_path / 'zeros.pth')
    net, info = load_model(tmp_path / 'zeros.pth')  # strict load of every published key and shape
    assert type(net).__name__ == info['arch'] == arch


def test_basicsr_suffixed_registry_name_is_the_same_architecture(tmp_path):
    """basicsr registers SRVGGNetCompact as SRVGGNetCompact_basicsr; options may name either."""
    from basicsr.archs.srvgg_arch import SRVGGNetCompact
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2)
    torch.save({'params': net.state_dict(), 'network_g': {'type': 'SRVGGNetCompact_basicsr', 'num_feat': 8}},
               tmp_path / 'compact.pth')
    loaded, info = load_model(tmp_path / 'compact.pth')
    assert info['options'] == {'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_conv': 2, 'upscale': 2,
                               'act_type': 'prelu'}  # the shapes complete what network_g left out
    assert info['io'] == ModelIO('frame', 'rgb', 3, 3, 2) and type(loaded) is SRVGGNetCompact
