"""TrainableModel's mechanics at the model level: accumulation, EMA (tied weights too), AMP, clipping."""
import copy

import pytest
import torch

from vsrkit.models.image_sr_model import ImageSRModel


def options(**train) -> dict:
    return {'is_train': True, 'device': 'cpu', 'scale': 2, 'path': {},
            'network_g': {'type': 'ViTSR', 'embed_dim': 16, 'num_heads': 2, 'depth': 2, 'mlp_dim': 32, 'dropout': 0.0},
            'train': {'optim_g': {'type': 'SGD', 'lr': 0.1}, 'pixel_opt': {'type': 'MSELoss'}, **train}}


def batch(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {'lq': torch.rand(n, 3, 6, 6, generator=g), 'gt': torch.rand(n, 3, 12, 12, generator=g)}


def test_accumulating_two_halves_equals_one_full_batch():
    torch.manual_seed(0)
    full = ImageSRModel(options())
    halves = ImageSRModel(options(accumulate_grad_batches=2))
    halves.net_g.load_state_dict(full.net_g.state_dict())
    data = batch(4)
    full.feed_data(data)
    full.optimize_parameters(1)
    for part in (slice(0, 2), slice(2, 4)):
        halves.feed_data({k: v[part] for k, v in data.items()})
        before = copy.deepcopy(halves.net_g.state_dict())
        halves.optimize_parameters(1)
    assert any(not torch.equal(before[k], v) for k, v in halves.net_g.state_dict().items())  # stepped on the 2nd
    for key, value in full.net_g.state_dict().items():
        torch.testing.assert_close(halves.net_g.state_dict()[key], value, atol=1e-6, rtol=1e-5)
    assert halves.get_current_log()['l_pixel'] == pytest.approx(full.get_current_log()['l_pixel'], rel=1e-5)


def test_ema_updates_each_tied_tensor_once_and_validation_uses_it():
    model = ImageSRModel(options(ema_decay=0.5))
    assert model.inference_net is model.net_g_ema
    start = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    model.feed_data(batch(2))
    model.optimize_parameters(1)
    live, ema = model.net_g.state_dict(), model.net_g_ema.state_dict()
    for key in live:  # ViTSR ties its 2 layers by default: the shared tensors must see one update, not two
        torch.testing.assert_close(ema[key], 0.5 * start[key] + 0.5 * live[key])


def test_bf16_autocast_on_cpu_only_when_asked():
    model = ImageSRModel(options(amp={'cuda': 'fp16', 'cpu': 'bf16'}))
    assert model.amp_dtype is torch.bfloat16
    model.feed_data(batch(2))
    model.optimize_parameters(1)
    assert model.output.dtype == torch.bfloat16 and torch.isfinite(torch.tensor(model.get_current_log()['l_pixel']))
    assert ImageSRModel(options(amp='fp16')).amp_dtype is None  # a plain string applies to CUDA only
    with pytest.raises(ValueError, match='train.amp: fp16 needs CUDA'):
        ImageSRModel(options(amp={'cpu': 'fp16'}))


def test_gradient_clipping_bounds_the_update():
    model = ImageSRModel(options(grad_clip_norm=1e-3, optim_g={'type': 'SGD', 'lr': 1.0}))
    before = torch.cat([p.detach().flatten().clone() for p in model.net_g.parameters()])
    model.feed_data(batch(2))
    model.optimize_parameters(1)
    after = torch.cat([p.detach().flatten() for p in model.net_g.parameters()])
    assert model.get_current_log()['grad_norm'] > 1e-3
    assert (after - before).norm() == pytest.approx(1e-3, rel=1e-3)  # SGD lr 1: the step is the clipped gradient
