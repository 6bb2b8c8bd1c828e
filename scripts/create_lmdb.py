"""Create BasicSR-format lmdbs for REDS, Vimeo-90K or any image folder (a thin CLI over vsrkit.data.lmdb_io).

    python scripts/create_lmdb.py --dataset reds --input datasets/REDS [--scale 4]
        train_sharp (+ val_sharp, renamed 240-269 as BasicSR's regroup does) -> train_sharp_with_val.lmdb
        train_sharp_bicubic/X4 (+ val_sharp_bicubic/X4)                     -> train_sharp_bicubic_with_val.lmdb
        (another --scale S: train_sharp_bicubic/XS ...                     -> train_sharp_bicubic_XS_with_val.lmdb)
    python scripts/create_lmdb.py --dataset vimeo90k --input datasets/vimeo90k [--split train|test]
        vimeo_septuplet/sequences, all 7 frames of sep_{split}list.txt     -> vimeo90k_{split}_GT.lmdb
        vimeo_septuplet_matlabLRx4/sequences                               -> vimeo90k_{split}_LR7frames.lmdb
    python scripts/create_lmdb.py --dataset folder --input DIR --output NAME.lmdb

Every run is resumable (rerun the same command after an interruption), never replaces an existing lmdb without
--overwrite (every output is checked before the first is written; the refusal names them), and --verify decodes
every key and checks it against meta_info.txt (alone, on existing lmdbs, it only verifies). Errors are one line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from vsrkit.data.lmdb_io import scan_images, verify_lmdb, write_lmdb

Job = tuple[list[tuple[str, Path]], Path]  # (key, image path) items and the lmdb to write

REDS_VAL_OFFSET = 240  # BasicSR renames val_sharp/000-029 to 240-269 so train and val share one lmdb


def _clip_frames(clip_dir: Path, clip_name: str) -> Iterator[tuple[str, Path]]:
    for path in sorted(clip_dir.glob('*.png')):
        yield f'{clip_name}/{path.stem}', path


def reds_jobs(root: Path, scale: int) -> list[Job]:
    jobs = []
    for train, val, output in [('train_sharp', 'val_sharp', 'train_sharp_with_val.lmdb'),
                               (f'train_sharp_bicubic/X{scale}', f'val_sharp_bicubic/X{scale}',
                                # BasicSR's name for X4; other scales get their own, never X4's
                                'train_sharp_bicubic_with_val.lmdb' if scale == 4
                                else f'train_sharp_bicubic_X{scale}_with_val.lmdb')]:
        if not (root / train).is_dir():
            raise FileNotFoundError(f'REDS folder {root / train} does not exist (expected the official layout '
                                    f'{root}/train_sharp/000/00000000.png ...).')
        clips = {d.name: d for d in sorted((root / train).iterdir()) if d.is_dir()}
        if (root / val).is_dir():
            for d in sorted((root / val).iterdir()):
                name = f'{int(d.name) + REDS_VAL_OFFSET:03d}'
                if name in clips:
                    raise ValueError(f'{root / val / d.name} would become clip {name}, which {root / train} '
                                     f'already has (val_sharp already regrouped into train_sharp? then remove '
                                     f'{root / val}).')
                clips[name] = d
        items = [item for name, d in sorted(clips.items()) for item in _clip_frames(d, name)]
        jobs.append((items, root / output))
    return jobs


def vimeo_jobs(root: Path, split: str) -> list[Job]:
    seq_list = root / 'vimeo_septuplet' / f'sep_{split}list.txt'
    if not seq_list.is_file():
        raise FileNotFoundError(f'{seq_list} does not exist (expected the official vimeo_septuplet layout).')
    seqs = [line.strip() for line in seq_list.read_text().splitlines() if line.strip()]
    jobs = []
    for folder, output in [('vimeo_septuplet/sequences', f'vimeo90k_{split}_GT.lmdb'),
                           ('vimeo_septuplet_matlabLRx4/sequences', f'vimeo90k_{split}_LR7frames.lmdb')]:
        items = [(f'{seq}/im{i}', root / folder / seq / f'im{i}.png') for seq in seqs for i in range(1, 8)]
        missing = [str(p) for _, p in items if not p.is_file()]
        if missing:
            raise FileNotFoundError(f'{len(missing)} frames listed by {seq_list} are missing, e.g. {missing[0]}.')
        jobs.append((items, root / output))
    return jobs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', required=True, choices=['reds', 'vimeo90k', 'folder'])
    parser.add_argument('--input', required=True, type=Path, help='dataset root (reds, vimeo90k) or image folder')
    parser.add_argument('--output', type=Path, help='NAME.lmdb (folder preset only)')
    parser.add_argument('--scale', type=int, default=4, help='REDS LR folder train_sharp_bicubic/X<scale>')
    parser.add_argument('--split', default='train', choices=['train', 'test'], help='Vimeo-90K list')
    parser.add_argument('--compress-level', type=int, default=1, help='PNG compression level (BasicSR: 1)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing lmdbs')
    parser.add_argument('--verify', action='store_true', help='decode every key and check it against meta_info')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, OSError) as err:
        print(f'error: {err.args[0] if isinstance(err, KeyError) and err.args else err}', file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    if args.dataset == 'reds':
        jobs = reds_jobs(args.input, args.scale)
    elif args.dataset == 'vimeo90k':
        jobs = vimeo_jobs(args.input, args.split)
    else:
        if args.output is None:
            raise ValueError('--dataset folder needs --output NAME.lmdb')
        jobs = [(scan_images(args.input), args.output)]
    existing = [str(output) for _, output in jobs if output.exists()]
    if existing and not args.overwrite and not args.verify:  # refused before the first lmdb is written
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace, or --verify to "
                              'check')

    for items, output in jobs:
        if output.exists() and not args.overwrite and args.verify:
            print(f'{output} exists: verifying only (pass --overwrite to rebuild).')
        else:
            with tqdm(total=len(items), unit='img', desc=f'write {output.name}') as bar:
                write_lmdb(items, output, overwrite=args.overwrite, compress_level=args.compress_level,
                           progress=bar.update)
        if args.verify:
            with tqdm(total=len(items), unit='img', desc=f'verify {output.name}') as bar:
                count = verify_lmdb(output, progress=bar.update)
            print(f'{output}: {count} keys verified.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
