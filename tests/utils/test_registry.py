"""vsrkit registers into basicsr's registries: usable from another BasicSR project, safe to import twice."""
import re
import subprocess
import sys
import textwrap

import torch



def test_names_are_registered_and_disjoint_from_basicsr():
    code = textwrap.dedent('''
        import vsrkit.utils
        import basicsr.archs, basicsr.data, basicsr.losses, basicsr.models
        from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY
        regs = (ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY)
        before = [set(r.keys()) for r in regs]
        import vsrkit.archs, vsrkit.data, vsrkit.losses, vsrkit.models
        for reg, old in zip(regs, before):
            new = set(reg.keys()) - old
            print(reg._name, sorted(new))
            assert all(reg.get(name).__module__.startswith('vsrkit.') for name in new)
            assert all(not reg.get(name).__module__.startswith('vsrkit.') for name in old)
    ''')
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "arch ['" in run.stdout and "'ViTSR'" in run.stdout
    assert "'PairedPatchDataset'" in run.stdout and "'ImageSRModel'" in run.stdout and "'SSIMLoss'" in run.stdout


def test_another_basicsr_project_builds_our_arch_from_its_yaml(tmp_path):
    (tmp_path / 'options.yml').write_text('network_g:\n  type: ViTSR\n  embed_dim: 32\n  num_heads: 2\n  depth: 1\n')
    (tmp_path / 'their_train.py').write_text(textwrap.dedent('''
        import yaml, torch
        import vsrkit.archs  # the only line a BasicSR project adds
        from basicsr.archs import build_network
        net = build_network(yaml.safe_load(open('options.yml'))['network_g'])
        print(type(net).__module__, tuple(net(torch.rand(1, 3, 8, 8)).shape))
    '''))
    run = subprocess.run([sys.executable, 'their_train.py'], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert 'vsrkit.archs.vit_arch (1, 3, 16, 16)' in run.stdout


def test_reimport_is_harmless_but_a_real_collision_is_reported():
    # In a child process: the reload replaces the registered class, which would leave other tests' imported ViTSR
    # a different class from the registry's.
    code = textwrap.dedent('''
        import importlib
        import vsrkit.archs.vit_arch as module
        from vsrkit.utils.registry import ARCH_REGISTRY, register
        importlib.reload(module)  # the same definition registering again
        assert ARCH_REGISTRY.get('ViTSR') is module.ViTSR
        import basicsr.archs
        try:
            @register(ARCH_REGISTRY)
            class EDSR:  # a different class under basicsr's name
                pass
        except KeyError as err:
            print('refused:', err)
    ''')
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert re.search("refused: .*'EDSR'.*already taken by basicsr.archs.edsr_arch.EDSR", run.stdout), run.stdout


def test_build_network_finds_basicsr_suffixed_names():
    """basicsr registers SRVGGNetCompact as 'SRVGGNetCompact_basicsr'; YAMLs name it without the suffix, as
    basicsr's own builder accepts."""
    from basicsr.archs.srvgg_arch import SRVGGNetCompact

    from vsrkit.archs import build_network

    net = build_network({'type': 'SRVGGNetCompact', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_conv': 2,
                         'upscale': 2})
    assert type(net) is SRVGGNetCompact
    assert net(torch.rand(1, 3, 5, 6)).shape == (1, 3, 10, 12)
