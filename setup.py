"""vsrkit: BasicSR-style plugin library for video and image super-resolution.

The repository keeps BasicSR's flat layout (archs/, data/, losses/, models/, utils/ at the top level);
``package_dir`` installs each folder as a subpackage of ``vsrkit`` so that code imports them only as
``vsrkit.archs``, ``vsrkit.data`` … and nothing is registered twice under two module paths.
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
SUBPACKAGES = ('utils', 'archs', 'data', 'losses', 'evaluation', 'inference', 'models', 'engine', 'inference_scripts')


def read_requirements() -> list[str]:
    lines = (HERE / 'requirements.txt').read_text().splitlines()
    return [line.split('#')[0].strip() for line in lines if line.split('#')[0].strip()]


setup(
    name='vsrkit',
    version='0.1.0',
    description='BasicSR-style plugin library for video and image super-resolution',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=[f'vsrkit.{name}' for name in SUBPACKAGES],
    package_dir={f'vsrkit.{name}': name for name in SUBPACKAGES},
    package_data={'vsrkit.data': ['meta_info/*.txt']},
    install_requires=read_requirements(),
    entry_points={'console_scripts': ['vsrkit-train = vsrkit.engine.train_loop:main',
                                    'vsrkit-upscale = vsrkit.inference_scripts.upscale_video:main']},
)
