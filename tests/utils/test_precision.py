"""vsrkit.utils.precision: what ``--dtype auto`` picks, from the CPU's flags (detected, never assumed)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vsrkit.archs  # noqa: F401  (registers the specs)
from vsrkit.archs.spec import ARCH_SPECS, ModelIO
from vsrkit.utils import precision
from vsrkit.utils.precision import auto_dtype, cpu_flags, parse_dtype

AMX_XEON = 'flags\t\t: fpu vme avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n'
AVX2_ONLY = 'flags\t\t: fpu vme sse4_2 avx avx2 fma\n'


def cpuinfo(tmp_path: Path, flags_line: str) -> Path:
    path = tmp_path / 'cpuinfo'
    path.write_text('processor\t: 0\nmodel name\t: some CPU\n' + flags_line + 'bugs\t\t: spectre_v1\n')
    return path


def test_cpu_flags_read_the_flags_line_and_nothing_where_unreadable(tmp_path):
    flags = cpu_flags(cpuinfo(tmp_path, AMX_XEON))
    assert {'amx_bf16', 'avx512_bf16', 'avx2'} <= flags and 'spectre_v1' not in flags and 'CPU' not in flags
    assert cpu_flags(tmp_path / 'absent') == frozenset()


@pytest.mark.parametrize('flags_line, amx_dtype, device, expected', [
    (AMX_XEON, 'bf16', 'cpu', 'bf16'),
    (AMX_XEON, 'fp32', 'cpu', 'fp32'),  # the network is not measured faster in bf16 (its spec)
    (AVX2_ONLY, 'bf16', 'cpu', 'fp32'),  # no bf16 arithmetic: bf16 would be far slower
    (AMX_XEON.replace(' amx_bf16', ''), 'bf16', 'cpu', 'fp32'),  # AVX512-BF16 alone: not measured faster
    (AMX_XEON, 'bf16', 'cuda', 'fp32'),  # nothing gained measured on CUDA
])
def test_auto_dtype_bf16_only_on_an_amx_cpu_for_a_network_measured_faster_in_it(tmp_path, monkeypatch, flags_line,
                                                                                amx_dtype, device, expected):
    path = cpuinfo(tmp_path, flags_line)
    monkeypatch.setattr(precision, 'cpu_flags', lambda: cpu_flags(path))
    name, why = auto_dtype(device, amx_dtype)
    assert name == expected and why
    parse_dtype(name, device)  # a name parse_dtype takes on that device


def test_auto_dtype_on_this_machine_follows_its_cpuinfo():
    flags = cpu_flags()
    name, why = auto_dtype('cpu', 'bf16')
    assert name == ('bf16' if 'amx_bf16' in flags else 'fp32'), why
    if name == 'bf16':  # torch agrees that this CPU computes bf16 natively
        assert torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_specs_name_bf16_for_amx_only_where_measured_faster():
    """MIA-VSR / IIA-VSR, ViTSR and VDSR were measured faster under bf16 autocast on an AMX CPU, ELSR slower
    (benchmarks/tiny_models.py: 0.69x); a spec cannot prefer a dtype the network does not tolerate."""
    options = {'MIAVSR': {'in_channels': 3}, 'IIAVSR': {'in_channels': 3},
               'ViTSR': {'in_chans': 3, 'scale': 2, 'window_size': None}, 'VDSR': {},
               'ELSR': {'in_channels': 3, 'scale': 4}}
    assert {name: ARCH_SPECS[name].io(o).amx_dtype for name, o in options.items()} == {
        'MIAVSR': 'bf16', 'IIAVSR': 'bf16', 'ViTSR': 'bf16', 'VDSR': 'bf16', 'ELSR': 'fp32'}
    with pytest.raises(ValueError, match='amx_dtype'):
        ModelIO('frame', 'rgb', 3, 3, 2, dtypes=(), amx_dtype='bf16')
