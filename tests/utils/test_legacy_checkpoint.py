"""Safe reading of the published VDSR pickles and their conversion (scripts/convert_checkpoint.py through the
generic loader); malicious pickles are refused without running anything."""
from __future__ import annotations

import importlib.util
import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from vsrkit.archs.loader import standard_checkpoint
from vsrkit.archs.vdsr_arch import VDSR
from vsrkit.utils.legacy_checkpoint import UnsafePickleError, load_legacy_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / 'scripts' / 'convert_checkpoint.py'


def _script_main():
    spec = importlib.util.spec_from_file_location('convert_checkpoint_script', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _state_entries(sd: dict) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix('torch.')) for k, v in sd.items()]


@pytest.mark.parametrize('name, json_name, widths', [
    ('vdsr_model_epoch_50.pth', 'vdsr_x234', [64] * 19),
    ('vdsr_l1_pruned_no_finetune.pth', 'vdsr_l1_pruned', [32] * 19),
])
def test_published_pickles_convert(name, json_name, widths, reference_checkpoint, reference_keys):
    read = load_legacy_checkpoint(reference_checkpoint(name))
    assert list(read) == ['params']  # the reader knows tensors, not architectures
    ckpt = standard_checkpoint(reference_checkpoint(name))  # VDSR's spec adds the options its shapes fix
    assert _state_entries(ckpt['params']) == _state_entries(read['params']) == reference_keys(json_name)
    assert all(v.device.type == 'cpu' and type(v) is torch.Tensor for v in ckpt['params'].values())
    assert ckpt['network_g'] == {'type': 'VDSR', 'num_channels': widths[0], 'num_layers': 18, 'widths': widths}
    model = VDSR(**{k: v for k, v in ckpt['network_g'].items() if k != 'type'})
    model.load_state_dict(ckpt['params'], strict=True)


class _Payload:
    """Pickles as a call of ``func(arg)``: what a malicious checkpoint does."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _malicious_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    files = {}
    # Legacy (non-zip) path: a bare protocol-0 pickle naming os.system.
    files['os.system'] = tmp_path / 'legacy_os_system.pth'
    files['os.system'].write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    # Zip format written by torch.save, the payload next to real tensors: os.system pickles as posix.system.
    files['posix.system'] = tmp_path / 'zip_os_system.pth'
    torch.save({'params': {'w': torch.zeros(2)}, 'x': _Payload(os.system, f'touch {marker}')}, files['posix.system'])
    files['builtins.eval'] = tmp_path / 'zip_eval.pth'
    torch.save({'model': _Payload(eval, f'open({str(marker)!r}, "w")')}, files['builtins.eval'])
    return files


def test_malicious_pickles_are_refused_and_not_executed(tmp_path):
    marker = tmp_path / 'pwned'
    for global_name, path in _malicious_files(tmp_path, marker).items():
        with pytest.raises(UnsafePickleError, match=f"{path.name}.*refusing to unpickle global '{global_name}'"):
            load_legacy_checkpoint(path)
        assert not marker.exists(), f'{global_name} ran while loading {path}'
    # The check itself would have noticed: plain pickle does run the payload.
    pickle.load(io.BytesIO((tmp_path / 'legacy_os_system.pth').read_bytes()))
    assert marker.exists()


def test_script_writes_atomically_and_refuses_overwrite(tmp_path, reference_checkpoint, capsys):
    main = _script_main()
    src, dst = reference_checkpoint('vdsr_l1_pruned_no_finetune.pth'), tmp_path / 'out' / 'vdsr_pruned.pth'
    assert main([str(src), str(dst)]) == 0
    saved = torch.load(dst, map_location='cpu', weights_only=True)  # a plain, weights-only loadable checkpoint
    assert saved['network_g']['widths'] == [32] * 19
    assert load_legacy_checkpoint(dst)['network_g'] == saved['network_g']  # converted files pass through
    assert saved == {'params': saved['params'], 'network_g': standard_checkpoint(dst)['network_g']}
    mtime = dst.stat().st_mtime_ns
    assert main([str(src), str(dst)]) == 1
    assert 'exists' in capsys.readouterr().err and dst.stat().st_mtime_ns == mtime
    assert main([str(src), str(dst), '--overwrite']) == 0
    assert sorted(p.name for p in dst.parent.iterdir()) == ['vdsr_pruned.pth']  # no temporary file left behind

    marker = tmp_path / 'pwned'
    evil = _malicious_files(tmp_path, marker)['os.system']
    assert main([str(evil), str(tmp_path / 'evil_out.pth')]) == 1
    assert 'os.system' in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / 'evil_out.pth').exists()
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_legacy_checkpoint(tmp_path / 'missing.pth')


def test_script_converts_any_recognised_checkpoint_with_its_remap(tmp_path, capsys):
    """An ESRGAN-original-named RRDBNet becomes basicsr's names + network_g; a misfit is refused, nothing written."""
    from basicsr.archs.rrdbnet_arch import RRDBNet
    main = _script_main()
    torch.manual_seed(0)
    ours = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, num_grow_ch=4).state_dict()
    renames = {'conv_body.': 'trunk_conv.', 'conv_up1.': 'upconv1.', 'conv_up2.': 'upconv2.', 'conv_hr.': 'HRconv.'}
    original = {}
    for key, value in ours.items():
        if key.startswith('body.0.rdb'):
            key = 'RRDB_trunk.0.RDB' + key[len('body.0.rdb'):]
        for new, old in renames.items():
            key = old + key[len(new):] if key.startswith(new) else key
        original[key] = value
    torch.save(original, tmp_path / 'RRDB_ESRGAN.pth')
    dst = tmp_path / 'rrdb.pth'
    assert main([str(tmp_path / 'RRDB_ESRGAN.pth'), str(dst)]) == 0
    saved = torch.load(dst, weights_only=True)
    assert saved['network_g'] == {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'scale': 4, 'num_feat': 8,
                                  'num_block': 1, 'num_grow_ch': 4}
    assert sorted(saved['params']) == sorted(ours) and all(torch.equal(saved['params'][k], v) for k, v in ours.items())
    assert main([str(tmp_path / 'RRDB_ESRGAN.pth'), str(tmp_path / 'as_vdsr.pth'), '--arch', 'VDSR']) == 1
    err = capsys.readouterr().err
    assert 'cannot load as VDSR' in err and 'missing input.weight' in err and err.count('\n') == 1
    assert not (tmp_path / 'as_vdsr.pth').exists()
