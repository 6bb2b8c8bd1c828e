"""Options are checked before anything starts; each error names the key path, the value and what was expected."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vsrkit.engine.option_checks import check_options
from vsrkit.engine.options import apply_overrides, load_options
from vsrkit.utils.signature import OptionsError

ROOT = Path(__file__).resolve().parents[2]


def base_options(tmp_path: Path) -> dict:
    opt = yaml.safe_load((ROOT / 'options' / 'vit_x2.yml').read_text())
    for phase in ('train', 'val'):  # real folders, so that only the injected fault is reported
        opt['datasets'][phase].update(dataroot_gt=str(tmp_path), dataroot_lq=str(tmp_path))
    return opt


def problems_for(tmp_path: Path, mutate) -> str:
    opt = base_options(tmp_path)
    mutate(opt)
    path = tmp_path / 'opt.yml'
    path.write_text(yaml.safe_dump(opt))
    with pytest.raises(OptionsError) as err:
        check_options(load_options(path, root=ROOT))
    return str(err.value)


def test_shipped_options_are_valid(tmp_path):
    check_options(load_options(ROOT / 'options' / 'vit_x2.yml', root=tmp_path))  # sample paths may be absent


@pytest.mark.parametrize('mutate, expected', [
    (lambda o: o['network_g'].update(type='VitSR'), "network_g.type: unknown architecture 'VitSR'. Did you mean 'ViTSR'?"),
    (lambda o: o['datasets']['train'].update(type='PairedPatchDatset'), "datasets.train.type: unknown dataset 'PairedPatchDatset'. Did you mean 'PairedPatchDataset'?"),
    (lambda o: o['train']['pixel_opt'].update(type='L1loss'), "train.pixel_opt.type: unknown loss 'L1loss'. Did you mean 'L1Loss'?"),
    (lambda o: o.update(model_type='ImageSRModle'), "model_type: unknown model type 'ImageSRModle'. Did you mean 'ImageSRModel'?"),
    (lambda o: o['train']['optim_g'].update(type='AdamWW'), "train.optim_g.type: unknown optimizer 'AdamWW'. Did you mean 'AdamW'?"),
    (lambda o: o['train']['scheduler'].update(type='CosineAnnealingLr'), "train.scheduler.type: unknown scheduler 'CosineAnnealingLr'. Did you mean 'CosineAnnealingLR'?"),
    (lambda o: o['val']['metrics']['psnr'].update(type='calculate_psnrr'), "val.metrics.psnr.type: unknown metric 'calculate_psnrr'. Did you mean 'calculate_psnr'?"),
    (lambda o: o['network_g'].update(embed_dimm=64), "network_g: ViTSR: unknown option(s) ['embed_dimm']"),
    (lambda o: o['train']['pixel_opt'].update(loss_weigth=2), "train.pixel_opt: L1Loss: unknown option(s) ['loss_weigth']"),
    (lambda o: o['network_g'].update(scale=4), 'network_g.scale: 4 differs from the top-level scale: 2'),
    (lambda o: o['datasets']['val'].update(scale=3), 'datasets.val.scale: 3 differs from the top-level scale: 2'),
    (lambda o: o['datasets']['train'].update(dataroot_gt='/nonexistent/HR'), 'datasets.train.dataroot_gt: /nonexistent/HR does not exist'),
    (lambda o: o['train'].pop('total_iter'), 'train.total_iter: missing'),
    (lambda o: o.pop('network_g'), 'network_g: missing'),
    (lambda o: o['datasets'].pop('train'), 'datasets.train: missing'),
    (lambda o: o['datasets']['train'].update(batch_size_per_gpu=0), 'datasets.train.batch_size_per_gpu: 0 is not a positive integer'),
    (lambda o: o['datasets']['train'].pop('gt_size'), 'datasets.train.gt_size: missing; expected a value (PairedPatchDataset needs it)'),
    (lambda o: o['datasets']['train'].update(type='PairedImageDataset', io_backend=None), 'datasets.train.io_backend: missing; expected a value (PairedImageDataset needs it)'),
    (lambda o: o['path'].update(resume_state='/nonexistent/4.state'), 'path.resume_state: /nonexistent/4.state does not exist'),
    (lambda o: o['path'].update(pretrain_network_g='/nonexistent/net_g.pth'), 'path.pretrain_network_g: /nonexistent/net_g.pth does not exist'),
])
def test_each_problem_is_reported_with_its_key_path(tmp_path, mutate, expected):
    message = problems_for(tmp_path, mutate)
    assert expected in message
    assert 'opt.yml' in message  # the file at fault


def test_unknown_type_lists_the_registered_names(tmp_path):
    message = problems_for(tmp_path, lambda o: o['network_g'].update(type='Nope'))
    assert 'Registered: ' in message and 'ViTSR' in message and 'EDSR' in message  # basicsr's archs too


def test_all_problems_reported_at_once(tmp_path):
    def mutate(o):
        o['network_g']['type'] = 'X'
        o['train']['optim_g']['type'] = 'Y'
    assert '2 problem(s)' in problems_for(tmp_path, mutate)


def test_force_yml_overrides():
    opt = {'train': {'optim_g': {'lr': 1}}}
    apply_overrides(opt, ['train:optim_g:lr=2e-4', 'train.ema_decay=0.999', 'val:flag=true', 'new:list=[1, 2]'])
    assert opt == {'train': {'optim_g': {'lr': 2e-4}, 'ema_decay': 0.999}, 'val': {'flag': True}, 'new': {'list': [1, 2]}}
    with pytest.raises(OptionsError, match="expected 'key:subkey=value'"):
        apply_overrides(opt, ['train:lr'])


def test_relative_paths_resolve_against_the_project_root(tmp_path):
    opt = load_options(ROOT / 'options' / 'vit_x2.yml', root=tmp_path)
    assert opt['datasets']['train']['dataroot_gt'] == str(tmp_path / 'datasets/sample/images/train/HR.lmdb')
    assert opt['path']['models'] == str(tmp_path / 'experiments' / 'vit_x2' / 'models')
    assert opt['datasets']['val']['scale'] == 2 and opt['datasets']['val']['phase'] == 'val'


def test_cli_reports_without_traceback(tmp_path):
    opt = base_options(tmp_path)
    opt['network_g']['type'] = 'VitSR'
    path = tmp_path / 'bad.yml'
    path.write_text(yaml.safe_dump(opt))
    run = subprocess.run([sys.executable, str(ROOT / 'train.py'), '-opt', str(path)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2
    assert "network_g.type: unknown architecture 'VitSR'. Did you mean 'ViTSR'?" in run.stderr
    assert 'Traceback' not in run.stderr + run.stdout
    missing = subprocess.run([sys.executable, str(ROOT / 'train.py'), '-opt', str(tmp_path / 'none.yml')],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and 'none.yml does not exist' in missing.stderr
