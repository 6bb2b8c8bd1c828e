"""One loader for .pth / .pt / .ckpt / .safetensors (vsrkit.utils.checkpoint.load_file) through the usual wrappers,
and safetensors written by vsrkit (tied weights, network_g metadata) read back to the same network."""
import json

import pytest
import safetensors.torch
import torch
from skimage import data

import vsrkit.archs  # noqa: F401
from vsrkit.archs.elsr_arch import ELSR
from vsrkit.archs.loader import load_model
from vsrkit.archs.vit_arch import ViTSR
from vsrkit.inference.frame_model import choose_tile
from vsrkit.models.image_sr_model import ImageSRModel
from vsrkit.utils.checkpoint import extract_state_dict, load_file, save_safetensors


@pytest.fixture(scope='module')
def photo():
    return torch.from_numpy(data.astronaut()[::16, ::16].copy()).permute(2, 0, 1)[None].float() / 255  # 32x32


def tied_vit():
    torch.manual_seed(0)
    net = ViTSR(embed_dim=16, num_heads=2, depth=3, mlp_dim=32, scale=2).eval()
    torch.nn.init.normal_(net.upsample[2].weight, std=0.05)
    return net


def test_safetensors_round_trip_keeps_tied_weights_and_network_g(tmp_path, photo):
    net = tied_vit()
    options = {'type': 'ViTSR', 'embed_dim': 16, 'num_heads': 2, 'depth': 3, 'mlp_dim': 32, 'scale': 2}
    path = save_safetensors(net.state_dict(), tmp_path / 'vit.safetensors', options)
    with safetensors.safe_open(str(path), framework='pt') as handle:  # read by safetensors itself
        assert json.loads(handle.metadata()['network_g']) == options
        assert sorted(handle.keys()) == sorted(net.state_dict())
    checkpoint = load_file(path)
    assert checkpoint['network_g'] == options
    loaded, info = load_model(path)
    assert info['arch'] == 'ViTSR' and info['source'] == 'network_g'
    assert loaded.transformer.layers[0] is loaded.transformer.layers[2]  # still one tied layer
    with torch.no_grad():
        assert torch.equal(loaded(photo), net(photo))
    assert [p.name for p in tmp_path.iterdir()] == ['vit.safetensors']  # written atomically, nothing left over


def test_plain_safetensors_from_a_model_site_is_detected_by_shapes(tmp_path, photo):
    torch.manual_seed(1)
    net = ELSR(scale=4, num_feat=6).eval()
    path = tmp_path / 'elsr_x4.safetensors'
    safetensors.torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    loaded, info = load_model(path)
    assert (info['arch'], info['source'], info['options']['scale']) == ('ELSR', 'shapes', 4)
    with torch.no_grad():
        assert torch.equal(loaded(photo), net(photo))


@pytest.mark.parametrize('suffix, wrap', [('.pth', 'params'), ('.pth', 'params_ema'), ('.pt', None),
                                          ('.ckpt', 'state_dict'), ('.pth', 'model')])
def test_every_suffix_and_wrapper_loads_the_same_weights(tmp_path, suffix, wrap):
    net = ELSR(scale=2, num_feat=6)
    state = {f'module.{k}': v for k, v in net.state_dict().items()}  # a DataParallel/DDP save
    path = tmp_path / f'net{suffix}'
    torch.save(state if wrap is None else {wrap: state, 'epoch': 3}, path)
    got = extract_state_dict(load_file(path))
    assert list(got) == list(net.state_dict()) and all(torch.equal(got[k], v) for k, v in net.state_dict().items())


def test_bad_files_are_named(tmp_path):
    broken = tmp_path / 'broken.safetensors'
    header = json.dumps({'w': {'dtype': 'F32', 'shape': [4], 'data_offsets': [0, 16]}}).encode()
    broken.write_bytes(len(header).to_bytes(8, 'little') + header + b'\0' * 3)  # 3 of the 16 bytes the header promises
    with pytest.raises(ValueError, match='broken.safetensors'):
        load_file(broken)
    with pytest.raises(FileNotFoundError, match='missing.safetensors'):
        load_file(tmp_path / 'missing.safetensors')


def training_options(tmp_path, **logger):
    return {'is_train': True, 'device': 'cpu', 'scale': 2, 'logger': logger, 'datasets': {'train': {'gt_size': 32}},
            'path': {'models': str(tmp_path / 'models'), 'training_states': str(tmp_path / 'states')},
            'network_g': {'type': 'ViTSR', 'embed_dim': 16, 'num_heads': 2, 'depth': 2, 'mlp_dim': 32,
                          'dropout': 0.0},
            'train': {'optim_g': {'type': 'SGD', 'lr': 0.1}, 'pixel_opt': {'type': 'MSELoss'}, 'ema_decay': 0.5}}


def test_training_saves_net_g_as_safetensors_when_asked(tmp_path, photo):
    model = ImageSRModel(training_options(tmp_path, save_format='safetensors'))
    g = torch.Generator().manual_seed(0)
    model.feed_data({'lq': torch.rand(2, 3, 6, 6, generator=g), 'gt': torch.rand(2, 3, 12, 12, generator=g)})
    model.optimize_parameters(1)  # the EMA and the live weights now differ
    model.save(0, 1)
    assert sorted(p.name for p in (tmp_path / 'models').iterdir()) == ['net_g_1.safetensors',
                                                                       'net_g_latest.safetensors']
    loaded, info = load_model(tmp_path / 'models' / 'net_g_latest.safetensors')
    assert info['source'] == 'network_g' and info['options']['dropout'] == 0.0
    with torch.no_grad():
        assert torch.equal(loaded(photo), model.net_g_ema(photo))  # the EMA weights, as inference picks
        assert not torch.equal(loaded(photo), model.net_g(photo))
    assert list((tmp_path / 'states').glob('*.state'))  # the training state stays a torch file


@pytest.mark.parametrize('save_format', ['pth', 'safetensors'])
def test_training_records_its_lr_patch_which_inference_tiles_by(tmp_path, save_format):
    model = ImageSRModel(training_options(tmp_path, save_format=save_format))
    model.save(0, 1)
    _, info = load_model(tmp_path / 'models' / f'net_g_latest.{save_format}')
    assert info['io'].train_size == 16  # gt_size 32 at x2
    plan = choose_tile(info['io'], 144, 176, arch='ViTSR')
    assert (plan.tile, plan.overlap) == (24, 4) and 'trained on 16 px patches' in plan.reason


def test_unknown_save_format_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="logger.save_format: expected one of pth, safetensors, got 'onnx'"):
        ImageSRModel(training_options(tmp_path, save_format='onnx'))
