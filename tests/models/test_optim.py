"""Optimizers by name, schedulers (basicsr's with the crash fixed, torch's) and warm-up."""
import pytest
import torch

from vsrkit.models.optim import CosineAnnealingRestartLR, build_optimizer, build_scheduler
from vsrkit.utils.signature import OptionsError


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize('opt, cls', [({'type': 'AdamW', 'lr': 1e-4, 'weight_decay': 1e-3}, torch.optim.AdamW),
                                      ({'type': 'SGD', 'lr': 0.1, 'momentum': 0.9, 'weight_decay': 1e-4}, torch.optim.SGD),
                                      ({'type': 'Adam', 'lr': 2e-4, 'betas': [0.9, 0.99]}, torch.optim.Adam)])
def test_any_torch_optimizer_by_name(opt, cls):
    optimizer = build_optimizer(params(), opt)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    for key, value in opt.items():
        if key != 'type':
            assert group[key] == (tuple(value) if isinstance(value, list) else value)


def test_bad_optimizer_options_name_the_key():
    with pytest.raises(OptionsError, match="unknown optimizer 'AdamX'"):
        build_optimizer(params(), {'type': 'AdamX', 'lr': 1})
    with pytest.raises(OptionsError, match='train.optim_g.*momentun'):
        build_optimizer(params(), {'type': 'SGD', 'lr': 0.1, 'momentun': 0.9})


def test_cosine_restart_holds_eta_min_past_its_periods():
    import basicsr.models.lr_scheduler as basicsr_sched

    def run(cls, steps):
        optimizer = torch.optim.SGD(params(), lr=1.0)
        scheduler = cls(optimizer, periods=[4, 4], restart_weights=[1, 0.5], eta_min=0.01)
        lrs = []
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]['lr'])
        return lrs

    with pytest.raises(TypeError):  # basicsr 1.4.2's bug, which ours fixes
        run(basicsr_sched.CosineAnnealingRestartLR, 10)
    lrs = run(CosineAnnealingRestartLR, 12)
    assert lrs[:7] == pytest.approx(run(basicsr_sched.CosineAnnealingRestartLR, 7))
    assert lrs[8:] == pytest.approx([0.01] * 4)


def test_linear_warmup_then_main_schedule():
    optimizer = torch.optim.SGD(params(), lr=1.0)
    scheduler = build_scheduler(optimizer, {'type': 'CosineAnnealingLR', 'T_max': 10, 'eta_min': 0.0}, warmup_iter=4)
    lrs = [optimizer.param_groups[0]['lr']]
    for _ in range(14):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]['lr'])
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # ramp to the base LR over 4 steps
    assert lrs[9] == pytest.approx(0.5)  # then cosine from the top: half-way after T_max / 2 steps
    assert lrs[14] == pytest.approx(0.0, abs=1e-12)


def test_scheduler_rejects_unknown_names_and_options():
    optimizer = torch.optim.SGD(params(), lr=1.0)
    with pytest.raises(OptionsError, match='unknown scheduler'):
        build_scheduler(optimizer, {'type': 'Cosine'})
    with pytest.raises(OptionsError, match='T_maxx'):
        build_scheduler(optimizer, {'type': 'CosineAnnealingLR', 'T_maxx': 3})
