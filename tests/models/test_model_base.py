"""TrainableModel's mechanics at the model level: accumulation, EMA (tied weights too), AMP, clipping."""
import copy
import logging

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


def lr_per_optimizer_step(calls_before_each_micro_batch: bool) -> list[float]:
    """The LR each of 4 optimizer steps used (accumulation 2), with update_learning_rate called as vsrkit's loop
    does (after each iteration) or as basicsr's does (before every micro-batch)."""
    torch.manual_seed(0)
    model = ImageSRModel(options(accumulate_grad_batches=2, warmup_iter=1,
                                 scheduler={'type': 'StepLR', 'step_size': 1, 'gamma': 0.5}))
    used = []
    for micro in range(1, 9):
        if calls_before_each_micro_batch:
            model.update_learning_rate(micro)
        model.feed_data(batch(2, seed=micro))
        lr = model.get_current_learning_rate()[0]
        model.optimize_parameters(micro)
        if micro % 2 == 0:
            used.append(lr)
            if not calls_before_each_micro_batch:
                model.update_learning_rate(micro // 2)
    return used


def test_lr_schedule_steps_once_per_optimizer_step_under_either_loop():
    expected = [0.1 / 2, 0.1, 0.05, 0.025]  # LinearLR warm-up from 1/2 over 1 step, then StepLR halving each step
    assert lr_per_optimizer_step(False) == pytest.approx(expected)
    assert lr_per_optimizer_step(True) == pytest.approx(expected)


def test_log_has_the_loss_before_the_first_step_completes():
    model = ImageSRModel(options(accumulate_grad_batches=2))
    model.feed_data(batch(2))
    model.optimize_parameters(1)
    first = model.get_current_log()['l_pixel']
    assert first == pytest.approx(torch.nn.functional.mse_loss(model.output, model.gt).item())
    model.feed_data(batch(2, seed=1))
    model.optimize_parameters(2)
    second = torch.nn.functional.mse_loss(model.output, model.gt).item()
    assert model.get_current_log()['l_pixel'] == pytest.approx((first + second) / 2)


def test_save_latest_and_keep_training_states(tmp_path):
    opt = options()
    opt['path'] = {'models': str(tmp_path / 'models'), 'training_states': str(tmp_path / 'states')}
    opt['logger'] = {'keep_training_states': 2}
    model = ImageSRModel(opt)
    (tmp_path / 'states').mkdir()
    (tmp_path / 'states' / 'notes.txt').write_text('not a state')
    for iteration in (5, 10, 15):
        model.save(0, iteration)
    model.save(-1, -1)  # basicsr's "latest": weights only
    assert sorted(p.name for p in (tmp_path / 'states').iterdir()) == ['10.state', '15.state', 'notes.txt']
    assert sorted(p.name for p in (tmp_path / 'models').iterdir()) == [
        'net_g_10.pth', 'net_g_15.pth', 'net_g_5.pth', 'net_g_latest.pth']
    opt['logger'] = {}
    ImageSRModel(opt).save(0, 20)  # default: keep all
    assert len(list((tmp_path / 'states').glob('*.state'))) == 3


def test_validation_logged_in_basicsrs_format_with_best(caplog, tmp_path):
    model = ImageSRModel(options())
    model.opt['val'] = {'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0},
                                    'niqe_like': {'type': 'calculate_psnr', 'crop_border': 0, 'better': 'lower'}}}
    # caplog's handler on basicsr's logger itself: an earlier test may have set up basicsr's logger, which stops
    # propagation to the root logger that caplog listens on
    logger = logging.getLogger('basicsr')
    logger.addHandler(caplog.handler)
    try:
        for value, iteration in ((20.0, 4), (19.0, 8), (21.0, 12)):
            with caplog.at_level('INFO', logger='basicsr'):
                model.log_validation('val', {'psnr': value, 'niqe_like': value}, iteration, None)
    finally:
        logger.removeHandler(caplog.handler)
    assert caplog.messages[-1] == ('Validation val\n\t # psnr: 21.0000\tBest: 21.0000 @ 12 iter\n'
                                   '\t # niqe_like: 21.0000\tBest: 19.0000 @ 8 iter\n')
