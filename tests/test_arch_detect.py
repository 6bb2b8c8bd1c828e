"""Architecture auto-detection: every supported network from a freshly saved checkpoint with non-default
hyper-parameters (through params / params_ema / module. wrappers), the published checkpoints, the published
MIA-VSR / IIA-VSR / Grey2RGB / ConvLSTM key lists, network_g precedence, overrides and the unrecognised case."""
import pytest
import torch
import yaml

import vsrkit.archs  # noqa: F401
from basicsr.archs.basicvsr_arch import BasicVSR, IconVSR
from basicsr.archs.edvr_arch import EDVR
from vsrkit.archs.convlstm_arch import ConvLSTM
from vsrkit.archs.elsr_arch import ELSR
from vsrkit.archs.grey2rgb_arch import GREY2RGB_RELEASES, Grey2RGBAutoEncoder
from vsrkit.archs.iiavsr_arch import IIAVSR
from vsrkit.archs.miavsr_arch import MIAVSR
from vsrkit.archs.vdsr_arch import VDSR
from vsrkit.archs.vit_arch import ViTSR
from vsrkit.archs.loader import SUPPORTED_ARCHS, detect_architecture, load_model

MIA_TINY = dict(mid_channels=8, embed_dim=12, depths=[2, 1], num_heads=[2, 3], window_size=[3, 4, 4], mlp_ratio=1.5)

# (class, constructor options, options detection must recover)
CASES = {
    'ViTSR-untied': (ViTSR, dict(embed_dim=24, num_heads=2, depth=3, mlp_dim=40, scale=3, share_weights=False),
                     dict(embed_dim=24, depth=3, mlp_dim=40, scale=3, share_weights=False, in_chans=3)),
    'ViTSR-tied': (ViTSR, dict(embed_dim=16, num_heads=4, depth=2, mlp_dim=24, scale=2, in_chans=1),
                   dict(embed_dim=16, depth=2, mlp_dim=24, scale=2, share_weights=True, in_chans=1)),
    'ELSR': (ELSR, dict(scale=3, num_feat=5), dict(scale=3, num_feat=5, in_channels=3)),
    'VDSR': (VDSR, dict(num_layers=4, widths=[8, 6, 7, 5, 9]), dict(num_layers=4, widths=[8, 6, 7, 5, 9])),
    'Grey2RGB-v3': (Grey2RGBAutoEncoder, GREY2RGB_RELEASES['v3.0'], dict(GREY2RGB_RELEASES['v3.0'])),
    'Grey2RGB-head': (Grey2RGBAutoEncoder, GREY2RGB_RELEASES['head'], dict(GREY2RGB_RELEASES['head'])),
    'ConvLSTM': (ConvLSTM, dict(input_dim=2, hidden_dims=[3, 4], num_layers=2, kernel_size=5, stack_layers=True),
                 dict(input_dim=2, hidden_dims=[3, 4], num_layers=2, kernel_size=[5, 5], stack_layers=True)),
    'MIAVSR': (MIAVSR, MIA_TINY, dict(MIA_TINY, in_channels=3)),
    'IIAVSR': (IIAVSR, MIA_TINY, dict(MIA_TINY, in_channels=3)),
    'BasicVSR': (BasicVSR, dict(num_feat=8, num_block=2), dict(num_feat=8, num_block=2)),
    'IconVSR': (IconVSR, dict(num_feat=8, num_block=1, temporal_padding=1), dict(num_feat=8, num_block=1,
                                                                                 temporal_padding=1)),
    'EDVR': (EDVR, dict(num_feat=8, num_frame=3, deformable_groups=2, num_extract_block=1, num_reconstruct_block=2,
                        with_tsa=False),
             dict(num_feat=8, num_frame=3, deformable_groups=2, num_extract_block=1, num_reconstruct_block=2,
                  with_tsa=False, with_predeblur=False, num_in_ch=3, num_out_ch=3)),
}

WRAPPERS = {
    'plain': lambda sd: sd,
    'params': lambda sd: {'params': sd},
    'params_ema': lambda sd: {'params_ema': sd, 'params': {k: torch.zeros_like(v) for k, v in sd.items()}},
    'module': lambda sd: {'params': {f'module.{k}': v for k, v in sd.items()}},
}


def _as_listed(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize('case', list(CASES))
def test_detects_a_fresh_checkpoint_with_non_default_options(case, tmp_path):
    cls, options, expected = CASES[case]
    torch.manual_seed(0)
    net = cls(**options).eval()
    for wrapper_name, wrap in WRAPPERS.items():
        path = tmp_path / f'{wrapper_name}.pth'
        torch.save(wrap(net.state_dict()), path)
        name, detected = detect_architecture(path)
        assert name == cls.__name__, wrapper_name
        assert {k: _as_listed(detected[k]) for k in expected} == {k: _as_listed(v) for k, v in expected.items()}
    loaded, info = load_model(path)  # the module.-prefixed one: strict load, same weights
    assert info['arch'] == cls.__name__ and info['source'] == 'shapes'
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)


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
    assert loaded.window_size == 4 and info['source'] == 'network_g'
    opt = tmp_path / 'opt.yml'
    opt.write_text(yaml.safe_dump({'network_g': {'type': 'ViTSR', 'window_size': 8, 'num_heads': 2}}))
    loaded, info = load_model(path, options=opt)
    assert loaded.window_size == 8 and info['options']['embed_dim'] == 16
    loaded, _ = load_model(path, options={'window_size': None})
    assert loaded.window_size is None


def test_explicit_arch_that_does_not_fit_is_a_clear_error(tmp_path):
    torch.save(ELSR(scale=2).state_dict(), tmp_path / 'elsr.pth')
    with pytest.raises(ValueError, match='cannot load as VDSR'):
        load_model(tmp_path / 'elsr.pth', arch='VDSR')
    with pytest.raises(KeyError, match='unknown architecture'):
        load_model(tmp_path / 'elsr.pth', arch='NoSuchNet')


def test_unrecognised_checkpoint_lists_the_supported_architectures(tmp_path):
    torch.save({'params': torch.nn.Linear(3, 4).state_dict()}, tmp_path / 'linear.pth')
    with pytest.raises(ValueError, match='unrecognised architecture') as err:
        detect_architecture(tmp_path / 'linear.pth')
    for name in SUPPORTED_ARCHS:
        assert name in str(err.value)
    assert {'ViTSR', 'ELSR', 'VDSR', 'MIAVSR', 'IIAVSR', 'Grey2RGBAutoEncoder', 'ConvLSTM', 'BasicVSR', 'EDVR',
            'IconVSR'} <= set(SUPPORTED_ARCHS)


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
    if file.startswith('vdsr_l1'):
        assert sum(p.numel() for p in net.parameters()) == 166_464  # NOTES §5


@pytest.mark.parametrize('keys, arch, expected', [
    ('miavsr_reds', 'MIAVSR', dict(mid_channels=64, embed_dim=120, depths=[6, 6, 6, 6], num_heads=[6, 6, 6, 6],
                                   window_size=[3, 8, 8], mlp_ratio=2.0)),
    ('iiavsr_reds', 'IIAVSR', dict(mid_channels=64, embed_dim=120, depths=[6, 6, 6, 6], num_heads=[6, 6, 6, 6],
                                   window_size=[3, 8, 8], mlp_ratio=2.0)),
    ('grey2rgb_autoencoder_v3', 'Grey2RGBAutoEncoder', {k: _as_listed(v) for k, v in
                                                        GREY2RGB_RELEASES['v3.0'].items()}),
    ('grey2rgb_autoencoder_head', 'Grey2RGBAutoEncoder', {k: _as_listed(v) for k, v in
                                                          GREY2RGB_RELEASES['head'].items()}),
    ('convlstm_v3', 'ConvLSTM', dict(input_dim=1, hidden_dims=[1, 1, 1], num_layers=3, kernel_size=[3, 3],
                                     stack_layers=False)),
])
def test_published_key_lists(reference_keys, tmp_path, keys, arch, expected):
    state = {k: torch.zeros(shape, dtype=getattr(torch, d)) for k, shape, d in reference_keys(keys)}
    name, options = detect_architecture({'params': state})
    assert name == arch and {k: _as_listed(options[k]) for k in expected} == expected
    if arch != 'IIAVSR':  # building the full REDS-size IIA-VSR too adds 7 s for what MIAVSR already shows
        torch.save({'params': state}, tmp_path / 'zeros.pth')
        net, _ = load_model(tmp_path / 'zeros.pth')  # strict load of every published key and shape
        assert type(net).__name__ == arch
