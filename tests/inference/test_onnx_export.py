"""scripts/export_onnx.py: single-frame networks exported with dynamic batch/height/width and checked against torch
by ONNX Runtime (here again, independently, on a real photo at a third size); refusals leave no file; the exported
file and --backend onnxruntime upscale like the torch backend."""
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from skimage import data

import vsrkit.archs  # noqa: F401
from vsrkit.archs.convlstm_arch import ConvLSTM
from vsrkit.archs.elsr_arch import ELSR
from vsrkit.archs.vdsr_arch import VDSR
from vsrkit.inference import onnx_backend
from vsrkit.inference_scripts.upscale_video import main as upscale

spec = importlib.util.spec_from_file_location('export_onnx', Path(__file__).resolve().parents[2] / 'scripts' / 'export_onnx.py')
export_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_script)


def photo(batch, height, width):
    image = cv2.resize(data.coffee(), (width * batch, height), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    return torch.stack(x.chunk(batch, dim=-1))


@pytest.fixture(scope='module')
def elsr(tmp_path_factory):
    root = tmp_path_factory.mktemp('onnx')
    torch.manual_seed(0)
    net = ELSR(scale=2, num_feat=6).eval()
    torch.nn.init.normal_(net.layer5.weight, std=0.1)
    torch.save({'params': net.state_dict()}, root / 'elsr.pth')
    assert export_script.main([str(root / 'elsr.pth'), str(root / 'elsr.onnx')]) == 0
    return net, root


def test_fp32_export_runs_in_onnxruntime_at_any_size(elsr):
    net, root = elsr
    model = onnx.load(str(root / 'elsr.onnx'))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta['vsrkit.arch'] == 'ELSR' and '"scale": 2' in meta['vsrkit.io']
    session = ort.InferenceSession(str(root / 'elsr.onnx'), providers=['CPUExecutionProvider'])
    x = photo(3, 27, 41)  # neither the traced nor the verified size, odd, batch 3
    got = session.run(None, {'input': x.numpy()})[0]
    with torch.no_grad():
        want = net(x).numpy()
    assert got.shape == (3, 3, 54, 82) and np.abs(got - want).max() <= 1e-4


def test_fp16_export_within_its_stated_bound(elsr, tmp_path):
    net, root = elsr
    assert export_script.main([str(root / 'elsr.pth'), str(tmp_path / 'half.onnx'), '--fp16']) == 0
    session = ort.InferenceSession(str(tmp_path / 'half.onnx'), providers=['CPUExecutionProvider'])
    x = photo(1, 24, 32)
    got = session.run(None, {'input': x.half().numpy()})[0].astype(np.float32)
    with torch.no_grad():
        want = net(x).numpy()
    assert 0 < np.abs(got - want).max() <= onnx_backend.FP16_BOUND


def test_refusals_leave_no_file(elsr, tmp_path, capsys, monkeypatch):
    net, root = elsr
    lstm = tmp_path / 'lstm.pth'
    torch.save(ConvLSTM(input_dim=1, hidden_dims=[2, 1], num_layers=2).state_dict(), lstm)
    assert export_script.main([str(lstm), str(tmp_path / 'lstm.onnx')]) == 1
    assert 'only single-frame networks are exported' in capsys.readouterr().err
    monkeypatch.setattr(onnx_backend, 'FP32_BOUND', -1.0)  # any export now "disagrees"
    assert export_script.main([str(root / 'elsr.pth'), str(tmp_path / 'bad.onnx')]) == 1
    err = capsys.readouterr().err
    assert 'differs from torch' in err and 'not written' in err and len(err.strip().splitlines()) == 1
    assert export_script.main([str(root / 'elsr.pth'), str(root / 'elsr.onnx')]) == 1  # exists, no --overwrite
    assert 'overwrite' in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['lstm.pth']


def test_onnx_model_and_backend_upscale_like_torch(elsr, tmp_path):
    net, root = elsr
    folder = tmp_path / 'frames'
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f'{i}.png'), np.roll(cv2.resize(data.coffee(), (40, 30)), 5 * i, axis=1))
    torch.manual_seed(1)
    vdsr = tmp_path / 'vdsr.pth'
    torch.save(VDSR(num_channels=4, num_layers=2).state_dict(), vdsr)  # the Y path, 1 channel, at 2x the size
    assert export_script.main([str(vdsr), str(tmp_path / 'vdsr.onnx')]) == 0
    runs = {'torch': [str(root / 'elsr.pth')], 'onnx file': [str(root / 'elsr.onnx')],
            'backend': [str(root / 'elsr.pth'), '--backend', 'onnxruntime'],
            'vdsr torch': [str(vdsr), '--scale', '2', '--dtype', 'fp32'],  # onnxruntime runs fp32
            'vdsr onnx': [str(tmp_path / 'vdsr.onnx'), '--scale', '2']}
    out = {}
    for name, model in runs.items():
        target = tmp_path / name.replace(' ', '_')
        assert upscale([str(folder), str(target), '--model', *model, '--quiet']) == 0, name
        out[name] = np.stack([cv2.imread(str(p)) for p in sorted(target.glob('*.png'))]).astype(int)
    assert out['torch'].shape == (2, 60, 80, 3) and out['vdsr torch'].shape == (2, 60, 80, 3)
    for a, b in (('torch', 'onnx file'), ('torch', 'backend'), ('vdsr torch', 'vdsr onnx')):
        assert np.abs(out[a] - out[b]).max() <= 1 and (out[a] == out[b]).mean() > 0.999, (a, b)


def test_onnx_backend_refuses_what_it_does_not_run(elsr, tmp_path, capsys):
    _, root = elsr
    args = [str(root / 'frames_missing'), str(tmp_path / 'o'), '--model', str(root / 'elsr.onnx'), '--quiet']
    (root / 'frames_missing').mkdir(exist_ok=True)
    cv2.imwrite(str(root / 'frames_missing' / '0.png'), cv2.resize(data.coffee(), (20, 16)))
    assert upscale(args + ['--dtype', 'bf16']) == 1
    assert 'onnxruntime runs fp32' in capsys.readouterr().err
    assert upscale(args + ['--backend', 'torch']) == 1
    assert 'ONNX file runs with --backend onnxruntime' in capsys.readouterr().err
