"""retain_freed_memory: large tensors allocated again and again stop costing page faults (glibc), and the
environment variable leaves glibc's defaults."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

CHURN = textwrap.dedent('''
    import resource, sys, torch
    from vsrkit.utils.cpu_allocator import retain_freed_memory
    print(retain_freed_memory())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):  # a 64 MB and a 12 MB tensor, written and freed: as a network's activations each frame
        a, b = torch.ones(16 << 20), torch.ones(3 << 20)
        del a, b
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
''')


def churn(env_value):
    env = {'VSRKIT_RETAIN_FREED_MEMORY': env_value}
    run = subprocess.run([sys.executable, '-c', CHURN], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    applied, faults = run.stdout.split()
    return applied == 'True', int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='tunes glibc malloc only')
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, retained = churn('1')
    default_applied, default = churn('0')
    assert applied and not default_applied
    # 20 x 76 MB touched: ~370 k faults of 4 KB with glibc's defaults, about one round's worth when kept
    assert default > 20 * 16_000 and retained < default / 5
