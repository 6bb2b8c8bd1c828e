"""build_network / build_dataset / build_loss / build_model: each works after importing only its own package (in a
fresh process, so nothing else has filled the registries), builds vsrkit's and basicsr's classes alike, and an
unknown or missing type is one line naming the option, the closest name and every registered one."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import pytest
import skimage.data

from vsrkit.utils.signature import OptionsError

ROOT = Path(__file__).resolve().parents[2]


# which vsrkit packages the code pulled in, besides utils (the ground floor)
LOADED = '''
import sys
print('loaded', sorted({m.split('.')[1] for m in sys.modules if m.startswith('vsrkit.')} - {'utils'}))
'''


def fresh(code: str) -> str:
    """Run ``code`` in a new interpreter (nothing imported before it); prints which vsrkit packages it loaded."""
    run = subprocess.run([sys.executable, '-c', textwrap.dedent(code) + LOADED], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_build_network_alone():
    out = fresh('''
        import torch
        from vsrkit.archs import build_network
        opt = {'type': 'ViTSR', 'embed_dim': 32, 'num_heads': 2, 'depth': 1}
        net = build_network(opt)
        print(type(net).__module__, tuple(net(torch.rand(1, 3, 8, 8)).shape), opt['type'])
        theirs = build_network({'type': 'MSRResNet', 'num_feat': 8, 'num_block': 1, 'upscale': 2})
        print(type(theirs).__module__, tuple(theirs(torch.rand(1, 3, 8, 8)).shape))
    ''')
    assert 'vsrkit.archs.vit_arch (1, 3, 16, 16) ViTSR' in out  # and the options dict keeps its 'type'
    assert 'basicsr.archs.srresnet_arch (1, 3, 16, 16)' in out
    assert "loaded ['archs']" in out


def test_build_loss_alone():
    out = fresh('''
        import torch
        from vsrkit.losses import build_loss
        ssim = build_loss({'type': 'SSIMLoss', 'data_range': 1.0})
        x = torch.rand(1, 3, 32, 32)
        print(type(ssim).__name__, float(ssim(x, x)))
        l1 = build_loss({'type': 'L1Loss', 'loss_weight': 2.0})
        print(type(l1).__module__, float(l1(torch.zeros(4), torch.ones(4))))
    ''')
    assert 'SSIMLoss 0.0' in out and 'basicsr.losses.basic_loss 2.0' in out
    assert "loaded ['losses']" in out


@pytest.fixture()
def pairs(tmp_path) -> Path:
    """GT photos and their x2 downscales, as a paired folder dataset reads them."""
    for name, photo in [('astronaut', skimage.data.astronaut()), ('chelsea', skimage.data.chelsea())]:
        gt = photo[:128, :160, ::-1]
        for folder, img in [('HR', gt), ('LR', cv2.resize(gt, (80, 64), interpolation=cv2.INTER_AREA))]:
            (tmp_path / folder).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / folder / f'{name}.png'), img)
    return tmp_path


def test_build_dataset_alone(pairs):
    out = fresh(f'''
        from vsrkit.data import build_dataset
        opt = {{'type': 'PairedPatchDataset', 'dataroot_gt': {str(pairs / 'HR')!r}, 'dataroot_lq': {str(pairs / 'LR')!r},
               'scale': 2, 'phase': 'val'}}
        dataset = build_dataset(opt)
        print(type(dataset).__name__, len(dataset), tuple(dataset[1]['gt'].shape), dataset[1]['key'])
        theirs = build_dataset({{**opt, 'type': 'PairedImageDataset', 'io_backend': {{'type': 'disk'}}}})
        print(type(theirs).__module__, len(theirs))
    ''')
    assert 'PairedPatchDataset 2 (3, 128, 160) chelsea' in out
    assert 'basicsr.data.paired_image_dataset 2' in out
    assert "loaded ['data']" in out


def test_build_model_alone(tmp_path):
    out = fresh(f'''
        from vsrkit.models import build_model
        opt = {{'model_type': 'ImageSRModel', 'is_train': True, 'device': 'cpu', 'scale': 2,
               'network_g': {{'type': 'ViTSR', 'embed_dim': 32, 'num_heads': 2, 'depth': 1}},
               'path': {{'models': {str(tmp_path)!r}, 'training_states': {str(tmp_path)!r}}},
               'train': {{'optim_g': {{'type': 'Adam', 'lr': 1e-3}}, 'pixel_opt': {{'type': 'SSIMLoss'}}}}}}
        model = build_model(opt)
        print(type(model).__name__, type(model.net_g).__name__, dict(model.losses.named_children()))
    ''')
    assert 'ImageSRModel ViTSR' in out and "'pixel': SSIMLoss" in out
    # the model package brought the networks and losses it builds; the engine (the options check) never came in
    loaded = out.split('loaded ')[1]
    assert "'archs'" in loaded and "'losses'" in loaded and "'engine'" not in loaded


def test_training_loop_builds_without_the_options_check_having_run(pairs, tmp_path):
    """The loop's dataset and model builders in a process that imported only the training loop and never called
    the options check."""
    out = fresh(f'''
        import torch
        from vsrkit.engine import train_loop
        dataset = train_loop.build_dataset('val', {{'type': 'PairedPatchDataset', 'dataroot_gt': {str(pairs / 'HR')!r},
                                                   'dataroot_lq': {str(pairs / 'LR')!r}, 'scale': 2, 'phase': 'val'}})
        model = train_loop.build_driven_model({{'model_type': 'ImageSRModel', 'device': 'cpu', 'scale': 2,
                                        'network_g': {{'type': 'ViTSR', 'embed_dim': 32, 'num_heads': 2, 'depth': 1}}}},
                                       torch.device('cpu'))
        print(type(dataset).__name__, len(dataset), type(model).__name__, type(model.net_g).__name__)
    ''')
    assert 'PairedPatchDataset 2 ImageSRModel ViTSR' in out


def test_unknown_or_missing_type_is_one_line():
    from vsrkit.archs import build_network
    from vsrkit.data import build_dataset
    from vsrkit.losses import build_loss
    from vsrkit.models import build_model

    with pytest.raises(OptionsError, match=r"^network_g\.type: unknown architecture 'VitSR'\. Did you mean 'ViTSR'\? "
                                           r"Registered: .*'?EDSR.*MIAVSR"):
        build_network({'type': 'VitSR'}, where='network_g')
    with pytest.raises(OptionsError, match=r"^datasets\.train\.type: unknown dataset 'REDSClipDatset'\. Did you mean "
                                           r"'REDSClipDataset'\?"):
        build_dataset({'type': 'REDSClipDatset'}, where='datasets.train')
    with pytest.raises(OptionsError, match=r"^train\.pixel_opt\.type: unknown loss 'SSIMloss'\. Did you mean "
                                           r"'SSIMLoss'\?"):
        build_loss({'type': 'SSIMloss'}, where='train.pixel_opt')
    with pytest.raises(OptionsError, match=r"^model_type: unknown model type 'ImageSRModl'\. Did you mean "
                                           r"'ImageSRModel'\?"):
        build_model({'model_type': 'ImageSRModl'})
    with pytest.raises(OptionsError, match=r'^network\.type: missing; expected the name of a registered architecture'):
        build_network({'embed_dim': 32})
