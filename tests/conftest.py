"""Shared test fixtures: the reference material and real images/clips from installed packages."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

torch = pytest.importorskip('torch')
torch.set_num_threads(min(2, os.cpu_count() or 1))

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = PROJECT_ROOT.parent / 'shared' / 'reference'


@pytest.fixture(scope='session')
def write_photo_pairs():
    """``write(root, crops, size)``: HR ``size``-pixel crops of real photos and their MATLAB-bicubic x2 LR as
    BasicSR-style folders ``root/<split>/{HR,LR}/<i>.png``; ``crops``: {split: [(photo, top, left), ...]}."""
    import cv2
    import numpy as np

    import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
    from basicsr.utils.matlab_functions import imresize

    def write(root: Path, crops: dict, size: int) -> Path:
        for split, items in crops.items():
            for i, (photo, y, x) in enumerate(items):
                hr = photo[y:y + size, x:x + size]
                lr = np.clip(np.round(imresize(hr / 255.0, 0.5) * 255), 0, 255).astype(np.uint8)
                for folder, image in (('HR', hr), ('LR', lr)):
                    (root / split / folder).mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(root / split / folder / f'{i}.png'), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return root

    return write


@pytest.fixture(scope='session')
def reference_dir() -> Path:
    """../shared/reference (checkpoints and key lists of the original systems); skips where absent."""
    if not REFERENCE.is_dir():
        pytest.skip(f'reference material not found at {REFERENCE} (only present in the vsrkit workspace)')
    return REFERENCE


@pytest.fixture(scope='session')
def originals(reference_dir: Path) -> Path:
    """../shared/reference/originals, the original code of the reference systems (parity tests); skips where
    absent."""
    path = reference_dir / 'originals'
    if not path.is_dir():
        pytest.skip(f'../shared/reference/originals absent: no original code to compare with at {path}')
    return path


@pytest.fixture(scope='session')
def reference_checkpoint(reference_dir):
    def get(name: str) -> Path:
        path = reference_dir / 'checkpoints' / name
        if not path.is_file():
            pytest.skip(f'reference checkpoint {path} is absent')
        return path
    return get


@pytest.fixture(scope='session')
def reference_keys(reference_dir):
    """Returns [(key, shape, dtype), ...] from state_dicts/<name>.json."""
    def get(name: str) -> list[tuple[str, tuple[int, ...], str]]:
        path = reference_dir / 'state_dicts' / f'{name}.json'
        if not path.is_file():
            pytest.skip(f'reference key list {path} is absent')
        return [(k, tuple(s), d) for k, s, d in json.loads(path.read_text())['entries']]
    return get


@pytest.fixture(scope='module')
def single_thread():
    """One torch thread for a module of tiny-tensor tests: on 2 shared cores thread hand-offs cost more than
    they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def sample_video() -> Path:
    """The bundled sample video set (datasets/sample/video), built on first use."""
    from vsrkit.data.sample_videos import build_video_sample

    sample = PROJECT_ROOT / 'datasets' / 'sample' / 'video'
    build_video_sample(sample)
    return sample


@pytest.fixture(scope='session')
def sample_reds_clips(tmp_path_factory, sample_video):
    """Returns make(clips, frames): the first ``frames`` GT and x4 LR frames of the sample video set's
    REDS-layout ``clips``, copied as disk folders gt/<clip>, lq/<clip> with meta.txt."""
    def make(clips: tuple[str, ...], frames: int) -> Path:
        root = tmp_path_factory.mktemp('clips')
        for clip in clips:
            for kind, source in (('gt', 'train_sharp'), ('lq', 'train_sharp_bicubic/X4')):
                (root / kind / clip).mkdir(parents=True)
                for i in range(frames):
                    shutil.copy(sample_video / 'REDS' / source / clip / f'{i:08d}.png', root / kind / clip / f'{i:08d}.png')
        (root / 'meta.txt').write_text(''.join(f'{clip} {frames} (128,192,3)\n' for clip in clips))
        return root
    return make


NO_CUDA = 'no CUDA device (CI has none; these cases run on a lent GPU machine)'
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)


@contextmanager
def _fp32_cuda():
    """TF32 off for the duration (cuDNN convolutions use it by default), so fp32 results on CUDA compare at fp32
    tolerances."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield torch.device('cuda')
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(params=['cpu', pytest.param('cuda', marks=CUDA)])
def device(request) -> torch.device:
    """Each device a test's function should hold on: the CPU, and CUDA (fp32 without TF32) where present."""
    if request.param == 'cpu':
        yield torch.device('cpu')
        return
    with _fp32_cuda() as cuda:
        yield cuda


@pytest.fixture
def cuda() -> torch.device:
    """CUDA (fp32 without TF32), for tests that compare it with the CPU; skips where there is no GPU."""
    if not torch.cuda.is_available():
        pytest.skip(NO_CUDA)
    with _fp32_cuda() as device:
        yield device
