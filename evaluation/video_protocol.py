"""Scoring super-resolved video clips: shared by ``RecurrentVSRModel`` validation and the REDS4 / Vimeo-90K-T
inference scripts.

A clip goes through the network in overlapping temporal chunks (``vsrkit.utils.tiling.stream_forward``: frames
are read lazily and each output frame is released as soon as it is final, so memory holds about one chunk);
every output frame is converted to uint8 (``tensor2img``) and scored against its GT frame with basicsr's
metrics (``calculate_metric``: PSNR / SSIM, RGB or Y, ``crop_border``). A clip's number is the mean over its
scored frames; the dataset's number is the mean over clips (as BasicSR's and MIA-VSR's test scripts report).

Datasets that cut clips into chunks themselves (``VideoClipTestDataset`` with ``chunk_size``) yield overlapping
items; :func:`owned_frames` gives each frame of a clip to exactly one chunk (the overlap is split at its
middle), and :func:`merge_clip_rows` combines the chunk rows of a clip weighted by their frame counts, so the
per-clip numbers are per-frame averages whatever the chunking.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.metrics import calculate_metric
from basicsr.utils import imwrite, tensor2img
from tqdm import tqdm
from vsrkit.data.sample_data import sample_builder_for
from vsrkit.data.video_clip_test_dataset import VideoClipTestDataset
from vsrkit.data.video_clips import frames_to_tensor
from vsrkit.archs.loader import load_model
from vsrkit.evaluation.tables import format_table
from vsrkit.utils.atomic import atomic_write_text
from vsrkit.utils.color import bicubic_frame
from vsrkit.utils.cpu_allocator import retain_freed_memory
from vsrkit.utils.precision import DTYPE_CHOICES, autocast_for, parse_dtype
from vsrkit.utils.tiling import stream_forward


def standard_metrics(crop_border: int = 0) -> dict[str, dict]:
    """PSNR and SSIM on RGB and on Y (BT.601), as basicsr metric options (keys: psnr_rgb, ssim_rgb, psnr_y,
    ssim_y)."""
    return {f'{name}_{channel}': {'type': f'calculate_{name}', 'crop_border': crop_border,
                                  'test_y_channel': channel == 'y'}
            for channel in ('rgb', 'y') for name in ('psnr', 'ssim')}


@torch.no_grad()
def upscale_frames(net: nn.Module, lq_frames: Iterable[torch.Tensor], scale: int, chunk: int | None = None,
                   chunk_overlap: int = 0, dtype: torch.dtype | None = None) -> Iterator[torch.Tensor]:
    """LR frames (C, h, w) in [0, 1] -> SR frames (C, h*scale, w*scale), float32 on CPU, in order.

    The recurrent ``net`` sees (1, t, C, h, w) runs of at most ``chunk`` frames (None: the whole clip at once),
    consecutive runs sharing ``chunk_overlap`` frames that are blended (``stream_forward``)."""
    param = next(net.parameters())

    def run(clip: torch.Tensor) -> torch.Tensor:  # (t, C, h, w) -> (t, C, H, W)
        with autocast_for(param.device, dtype):
            return net(clip.unsqueeze(0).to(param.device, param.dtype))[0].float().cpu()

    # A chunk longer than any clip makes the whole clip one run (the same code path).
    yield from stream_forward(run, lq_frames, scale, chunk or 1 << 30, chunk_overlap if chunk else 0)


def score_frame(image: np.ndarray, gt: np.ndarray, metrics: dict[str, dict]) -> dict[str, float]:
    """uint8 BGR image vs uint8 BGR GT -> {metric name: value} with basicsr metric options."""
    return {name: float(calculate_metric({'img': image, 'img2': gt}, dict(opt))) for name, opt in metrics.items()}


def owned_frames(frame_start: int, length: int, clip_length: int, chunk_overlap: int) -> range:
    """The frames of a dataset chunk [frame_start, frame_start+length) of a ``clip_length``-frame clip that this
    chunk scores: chunks as ``VideoClipTestDataset.chunks`` cuts them, each overlap split at its middle."""
    spans = VideoClipTestDataset.chunks(clip_length, length, chunk_overlap)
    starts = [s for s, _ in spans]
    if frame_start not in starts:
        raise ValueError(f'frame_start {frame_start} is not a chunk start of a {clip_length}-frame clip cut in '
                         f'{length}-frame chunks overlapping by {chunk_overlap} (starts {starts})')
    i = starts.index(frame_start)
    bounds = [0] + [(spans[k][0] + spans[k - 1][1]) // 2 for k in range(1, len(spans))] + [clip_length]
    return range(bounds[i], bounds[i + 1])


def score_clip(sr_frames: Iterable[torch.Tensor], gt_frames: Iterable[torch.Tensor | np.ndarray],
               metrics: dict[str, dict], indices: Iterable[int], score: Callable[[int], bool] = lambda i: True,
               on_frame: Callable[[int, np.ndarray], None] | None = None) -> tuple[dict[str, float], int]:
    """Mean of ``metrics`` over the frames of a clip for which ``score(index)`` holds.

    sr_frames: (C, H, W) float tensors in [0, 1]; gt_frames: the same or uint8 BGR arrays; indices: the clip
    frame index of each. ``on_frame(index, uint8 BGR image)`` sees every scored frame (e.g. to save it).
    Returns (means, number of frames scored)."""
    sums: dict[str, float] = {name: 0.0 for name in metrics}
    count = 0
    for index, sr, gt in zip(indices, sr_frames, gt_frames):
        if not score(index):
            continue
        image = tensor2img(sr.unsqueeze(0))
        reference = gt if isinstance(gt, np.ndarray) else tensor2img(gt.unsqueeze(0))
        for name, value in score_frame(image, reference, metrics).items():
            sums[name] += value
        count += 1
        if on_frame is not None:
            on_frame(index, image)
    if count == 0:
        raise ValueError('no frame of the clip was scored')
    return {name: total / count for name, total in sums.items()}, count


def merge_clip_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of chunks ({'name': clip, 'frames': n, metric: mean over its n frames}) -> one row per clip,
    each metric the frame-weighted mean (the clip's per-frame average); clip order kept."""
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        target = merged.setdefault(row['name'], {'name': row['name'], 'frames': 0})
        n = int(row['frames'])
        for key, value in row.items():
            if key not in ('name', 'frames'):
                target[key] = target.get(key, 0.0) + float(value) * n
        target['frames'] += n
    for row in merged.values():
        for key in row:
            if key not in ('name', 'frames'):
                row[key] /= row['frames']
    return list(merged.values())


def average_row(rows: list[dict[str, Any]], name: str = 'average') -> dict[str, Any]:
    """The mean over clips of every metric (and the total frame count)."""
    metrics = [k for k in rows[0] if k not in ('name', 'frames')]
    return {'name': name, 'frames': sum(int(r['frames']) for r in rows),
            **{k: float(np.mean([r[k] for r in rows])) for k in metrics}}


def write_results(rows: list[dict[str, Any]], csv_path: str | Path, json_path: str | Path,
                  info: dict[str, Any] | None = None) -> None:
    """Per-clip rows plus the average as CSV and JSON ({'info', 'clips', 'average'}), written atomically."""
    average = average_row(rows)
    columns = list(average)
    lines = [','.join(columns)] + [','.join(str(r[c]) for c in columns) for r in rows + [average]]
    atomic_write_text(Path(csv_path), '\n'.join(lines) + '\n')
    atomic_write_text(Path(json_path), json.dumps({'info': info or {}, 'clips': rows, 'average': average},
                                                   indent=2) + '\n')


# ------------------------------------------------------------------------------------------ benchmarks
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Benchmark:
    """A test protocol for :func:`benchmark_main`: default files (relative to the project root) and scoring.

    options: the options file that trains ``checkpoint`` (named in messages).

    dataset / sample_dataset: ``VideoClipTestDataset`` options for the real set and for the bundled sample
    stand-in used where the real set is absent. center_frame_only: score only each clip's centre frame."""

    name: str
    options: str
    checkpoint: str
    dataset: dict
    sample_dataset: dict
    center_frame_only: bool = False
    scale: int = 4


def evaluate_clips(net: nn.Module | None, dataset: Any, scale: int, metrics: dict[str, dict],
                   center_frame_only: bool = False, chunk: int | None = None, chunk_overlap: int = 0,
                   dtype: torch.dtype | None = None, compare_bicubic: bool = True,
                   image_dir: str | Path | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Score every clip of a ``VideoClipTestDataset`` (its clips, read lazily frame by frame): one row per clip
    with ``frames`` and the mean of each metric (``bicubic_<metric>`` beside it when ``compare_bicubic``;
    ``net=None`` scores bicubic only). ``image_dir``: the network's scored frames are written there as
    ``<frame key>.png``."""
    rows = []
    for clip in tqdm(dataset.clips, desc='clips', unit='clip', disable=not progress):
        keys = clip.keys
        centre = len(keys) // 2
        scored = (lambda i: i == centre) if center_frame_only else (lambda i: True)

        def lq_frames():
            return (frames_to_tensor(dataset.lq_store.read([key]))[0] for key in keys)

        def gt_frames():
            return (dataset.gt_store.read([key])[0] for key in keys)

        candidates = {}
        if net is not None:
            candidates[''] = upscale_frames(net, lq_frames(), scale, chunk, chunk_overlap, dtype)
        if compare_bicubic or net is None:
            candidates['bicubic_'] = (bicubic_frame(frame, scale) for frame in lq_frames())
        row: dict[str, Any] = {'name': clip.name}
        for prefix, frames in candidates.items():
            save = None
            if image_dir is not None and not prefix:
                def save(index, image):
                    imwrite(image, str(Path(image_dir) / f'{keys[index]}.png'))
            means, count = score_clip(frames, gt_frames(), metrics, range(len(keys)), scored, save)
            row['frames'] = count
            row.update({prefix + k: v for k, v in means.items()})
        rows.append(row)
    return rows


def _resolve(path: str | None) -> Path | None:
    return None if path is None else (Path(path) if Path(path).is_absolute() else PROJECT_ROOT / path)


def _dataset_options(args: argparse.Namespace, bench: Benchmark) -> tuple[dict, str]:
    """The real set when it (or a user-given path) exists, else the sample stand-in, with a message."""
    given = {'dataroot_gt': args.gt, 'dataroot_lq': args.lq, 'meta_info_file': args.meta_info}
    real = {k: str(_resolve(v)) if k in ('dataroot_gt', 'dataroot_lq', 'meta_info_file') else v
            for k, v in bench.dataset.items()}
    if any(given.values()):  # paths given on the command line (relative to the working directory)
        opt = {**real, **{k: str(Path(v)) for k, v in given.items() if v}}
        opt['io_backend'] = {'type': 'lmdb' if str(opt['dataroot_lq']).rstrip('/').endswith('.lmdb') else 'disk'}
        return opt, f'{bench.name} at {opt["dataroot_lq"]}'
    if Path(real['dataroot_gt']).exists() and Path(real['dataroot_lq']).exists():
        return real, f'{bench.name} at {real["dataroot_lq"]}'
    sample = {k: str(_resolve(v)) if k in ('dataroot_gt', 'dataroot_lq', 'meta_info_file') else v
              for k, v in bench.sample_dataset.items()}
    print(f'{bench.name} not found at {real["dataroot_lq"]} / {real["dataroot_gt"]}: evaluating on the bundled '
          f'sample clips instead ({sample["dataroot_lq"]}); these numbers are NOT {bench.name} results.',
          file=sys.stderr)
    found = sample_builder_for(sample['dataroot_gt'])
    if found and not found[1].exists():
        found[0](found[1])
    return sample, f'sample stand-in for {bench.name} at {sample["dataroot_lq"]}'


def benchmark_main(bench: Benchmark, argv: list[str] | None = None, description: str = '') -> int:
    """The command line shared by ``inference_scripts/reds4.py`` and ``vimeo90k.py`` (see their docstrings)."""
    retain_freed_memory()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--model', help=f'checkpoint (.pth); default {bench.checkpoint} (bicubic only if absent)')
    parser.add_argument('--opt', default=None,
                        help="options YAML whose network_g builds the model (default: the checkpoint's own "
                             "'network_g' entry, else the architecture recognised from its keys and shapes)")
    parser.add_argument('--gt', help='GT frames: lmdb or folder of clip folders (default: the standard path)')
    parser.add_argument('--lq', help='LR frames: lmdb or folder (lmdb when the path ends in .lmdb)')
    parser.add_argument('--meta-info', help='clip list (BasicSR meta_info format)')
    parser.add_argument('--crop-border', type=int, default=0, help='pixels shaved before scoring (default 0)')
    parser.add_argument('--chunk', type=int, default=None, help='frames per temporal chunk (default: whole clip)')
    parser.add_argument('--chunk-overlap', type=int, default=2, help='frames shared by consecutive chunks')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=DTYPE_CHOICES, default='fp32', help='autocast dtype (fp16: CUDA only)')
    parser.add_argument('--no-bicubic', action='store_true', help='do not score bicubic upscaling beside')
    parser.add_argument('--out-dir', help='where results.csv / results.json (and images) go; '
                                          f'default results/{bench.name}_<checkpoint name>')
    parser.add_argument('--save-images', action='store_true', help='write the scored SR frames as PNG')
    parser.add_argument('--overwrite', action='store_true', help='replace earlier results in the output folder')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    try:
        net, arch = None, 'bicubic'
        model = Path(args.model) if args.model else _resolve(bench.checkpoint)
        if args.model is None and not model.is_file():
            print(f'no checkpoint at {model} (train with options/{Path(bench.options).name} or pass --model): '
                  'scoring bicubic upscaling only.', file=sys.stderr)
        else:
            net, info = load_model(model, options=args.opt, device=args.device)  # params_ema preferred
            if info['io'].temporal != 'clip' or info['io'].scale != bench.scale:
                raise ValueError(f"{model}: {info['arch']} is fed {info['io'].describe()}; {bench.name} scores "
                                 f'recurrent networks that take whole clips, x{bench.scale}')
            arch = f"{info['arch']} ({model})"
        dtype = parse_dtype(args.dtype, args.device)
        data_opt, where = _dataset_options(args, bench)
        dataset = VideoClipTestDataset({**data_opt, 'scale': bench.scale})
        out_dir = Path(args.out_dir) if args.out_dir else \
            PROJECT_ROOT / 'results' / f"{bench.name}_{model.stem if net is not None else 'bicubic'}"
        earlier = [str(p) for p in (out_dir / 'results.csv', out_dir / 'results.json', out_dir / 'images') if p.exists()]
        if earlier and not args.overwrite:  # refused before the evaluation: earlier results are never replaced silently
            raise FileExistsError(f"{', '.join(earlier)} exist(s); pass --overwrite to replace, or --out-dir elsewhere")
        metrics = standard_metrics(args.crop_border)
        rows = evaluate_clips(net, dataset, bench.scale, metrics, bench.center_frame_only, args.chunk,
                              args.chunk_overlap, dtype, not args.no_bicubic,
                              out_dir / 'images' if args.save_images and net is not None else None,
                              not args.no_progress)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    average = average_row(rows)
    columns = list(average)
    frames = 'centre frame of each clip' if bench.center_frame_only else 'every frame'
    print(f'{arch} x{bench.scale} on {where}: PSNR (dB) / SSIM on RGB and Y, {frames}, '
          f'crop_border {args.crop_border}')
    print(format_table(rows + [average], columns))
    info = {'benchmark': bench.name, 'data': where, 'model': str(model) if net is not None else None,
            'crop_border': args.crop_border, 'center_frame_only': bench.center_frame_only, 'dtype': args.dtype,
            'chunk': args.chunk, 'chunk_overlap': args.chunk_overlap if args.chunk else 0}
    write_results(rows, out_dir / 'results.csv', out_dir / 'results.json', info)
    print(f'wrote {out_dir / "results.csv"} and {out_dir / "results.json"}')
    return 0
