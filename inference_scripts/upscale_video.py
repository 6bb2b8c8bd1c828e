#!/usr/bin/env python
"""Upscale a video (or a folder of frames) with any registered SR network, streaming, in bounded memory.

Usage:
    vsrkit-upscale INPUT OUTPUT --model CKPT [--opt YML | --arch NAME] [--scale S] [--tile N --tile-overlap N]
                   [--chunk N --chunk-overlap N] [--batch N] [--device cpu|cuda] [--dtype auto|fp32|fp16|bf16]
                   [--crf N] [--preset NAME] [--fps F] [--window-padding MODE] [--no-audio] [--no-subtitles]
                   [--backend torch|onnxruntime]

INPUT: a video file (mp4, mkv, avi, mov, ...; 8 bits per sample, or more, e.g. 10-bit HEVC) or a folder of frames
(png/jpg/bmp/tif, sorted by name, 8- or 16-bit, RGB or RGBA; ``--fps``, default 25, sets their timing). OUTPUT: a
video file (.mp4, also .mkv/.mov: H.264, yuv420p; yuv420p10le (High 10) for input of more than 8 bits) or a folder
(PNG frames ``00000000.png`` ...; exact, lossless, 16-bit and alpha kept). The
architecture is detected from the checkpoint (:mod:`vsrkit.archs.loader`); ``--opt`` (an options YAML's
network_g) or ``--arch`` overrides it.

What is kept (:mod:`vsrkit.inference.video_io`): the frame count, every frame's timestamp (variable frame rate
survives), every audio and subtitle stream without re-encoding where the output container can hold it (one line
names any it cannot), the rotation and colour tags; network outputs are clamped to [0, 1] and *rounded*.
yuv420p needs an even width and height: an odd output size is padded by one replicated row/column at the
bottom/right (PNG output keeps the exact size).

How each kind of network is fed (:mod:`vsrkit.inference.frame_model`, from the architecture's ``ModelIO``):
single-frame networks ``--batch`` frames per call (VDSR: the Y of the MATLAB-bicubic ``--scale`` upscale, as
``eval_images.py``); sliding-window networks (EDVR) each frame with its neighbours (``--window-padding``);
recurrent networks overlapping chunks of ``--chunk`` frames sharing ``--chunk-overlap``, blended.
Tiling: by default chosen from the architecture's cost class and announced in one line (global attention, e.g.
the demo's ViTSR: tiles near its training patch; convolutional networks: whole frames up to about 2 MP);
``--tile N`` sets N-pixel tiles, ``--tile 0`` forces whole frames. ``--dtype bf16/fp16`` runs the network under
autocast where its spec tolerates it (fp16: CUDA only); the default, ``auto``, runs bf16 on a CPU with AMX for
networks whose spec says it is faster there (``ModelIO.amx_dtype``: MIA-VSR, IIA-VSR, ViTSR, VDSR) and fp32
otherwise, and says which and why (``vsrkit.utils.precision.auto_dtype``). ``--backend onnxruntime`` (or an ``.onnx`` file
from ``scripts/export_onnx.py`` as ``--model``) runs single-frame networks in ONNX Runtime, fed the same way.

Safety: the output is written under a temporary name in the output's folder and renamed only when complete; an
error or Ctrl-C removes it. Errors (unreadable input, no frames, an unwritable output, bad options) print one
line and exit 1; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import torch

from vsrkit.archs.loader import load_model
from vsrkit.inference.frame_model import FrameModel, choose_tile
from vsrkit.inference.onnx_backend import OnnxNetwork, export_onnx, load_onnx
from vsrkit.inference.pipeline import upscale_video
from vsrkit.inference.video_io import FrameSource, open_writer
from vsrkit.utils.cpu_allocator import retain_freed_memory
from vsrkit.utils.precision import AUTO, DTYPE_CHOICES, auto_dtype, parse_dtype

__all__ = ['FrameSource', 'main', 'open_writer', 'upscale_video']


# ----------------------------------------------------------------------------------------------- CLI
def _count(minimum: int):
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f'must be an integer >= {minimum}, got {value}')
        return number
    return parse


def _network(args: argparse.Namespace, device: torch.device) -> tuple:
    """(network, info) for --model / --arch / --opt / --backend."""
    onnx_file = args.model.lower().endswith('.onnx')
    backend = args.backend or ('onnxruntime' if onnx_file else 'torch')
    if backend == 'torch':
        if onnx_file:
            raise ValueError(f'--model {args.model}: an ONNX file runs with --backend onnxruntime')
        return load_model(args.model, args.arch, args.opt, device)
    if device.type != 'cpu' or args.dtype not in ('fp32', AUTO):
        raise ValueError('--backend onnxruntime runs fp32 on the CPU here (export with scripts/export_onnx.py --fp16 '
                         'for a half-precision model); drop --device / --dtype')
    if onnx_file:
        if args.arch or args.opt:
            raise ValueError('--arch / --opt: an ONNX file says how it is fed itself')
        return load_onnx(args.model)
    net, info = load_model(args.model, args.arch, args.opt, device)
    return OnnxNetwork(export_onnx(net, info['io'], info['arch'])), {**info, 'source': info['source'] + ', onnx'}


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    retain_freed_memory()
    parser = argparse.ArgumentParser(prog='vsrkit-upscale', description=__doc__.splitlines()[1])
    parser.add_argument('input', help='video file or folder of frames')
    parser.add_argument('output', help='video file (.mp4/.mkv/.mov) or folder for PNG frames')
    parser.add_argument('--model', required=True, help='checkpoint (.pth/.pt/.ckpt/.safetensors) or .onnx')
    parser.add_argument('--backend', choices=('torch', 'onnxruntime'),
                        help='torch (default) or onnxruntime (CPU; a checkpoint is exported and verified first; '
                             'an .onnx --model always runs in onnxruntime)')
    source_group = parser.add_mutually_exclusive_group()
    source_group.add_argument('--opt', help='options YAML whose network_g builds the model (overrides detection)')
    source_group.add_argument('--arch', help='registered architecture name (overrides detection)')
    parser.add_argument('--scale', type=_count(1), help='upscaling factor for VDSR-style networks (default 2)')
    parser.add_argument('--tile', type=_count(0),
                        help='tile size in network-input pixels; 0: whole frames (default: chosen from the '
                             "architecture's cost, announced)")
    parser.add_argument('--tile-overlap', type=_count(0), help='tile overlap in pixels (default 16; automatic '
                        'tiles of global-attention networks: a quarter of the training patch, at least 4)')
    parser.add_argument('--chunk', type=_count(1), default=16, help='frames per recurrent chunk (default 16)')
    parser.add_argument('--chunk-overlap', type=int, default=4, help='frames shared by chunks (default 4)')
    parser.add_argument('--batch', type=_count(1), default=4, help='frames per call of frame/window networks')
    parser.add_argument('--window-padding', default='reflection',
                        choices=('reflection', 'replicate', 'reflection_circle', 'circle'))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', default=AUTO, choices=DTYPE_CHOICES + (AUTO,),
                        help='autocast precision (default auto: bf16 on a CPU with AMX for networks measured faster '
                             'in it, else fp32; the choice and why are announced)')
    parser.add_argument('--crf', type=int, default=18, help='x264 quality (0-51, lower is better; default 18)')
    parser.add_argument('--preset', default='medium', help='x264 preset (default medium)')
    parser.add_argument('--fps', type=float, default=25.0, help='frame rate of a folder input (default 25)')
    parser.add_argument('--no-audio', action='store_true', help='do not copy the audio streams')
    parser.add_argument('--no-subtitles', action='store_true', help='do not copy the subtitle streams')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--overwrite', action='store_true', help='replace OUTPUT if it exists (default: refuse)')
    args = parser.parse_args(argv)
    writer = None
    try:
        output = Path(args.output)
        if output.exists() and not args.overwrite and not (output.is_dir() and not any(output.iterdir())):
            # refused before any work: nothing the user has is replaced (an empty folder holds nothing)
            raise FileExistsError(f'output {args.output} exists; pass --overwrite to replace it')
        device = torch.device(args.device)
        if device.type == 'cuda' and not torch.cuda.is_available():
            raise ValueError('--device cuda: CUDA is not available')
        dtype = None if args.dtype == AUTO else parse_dtype(args.dtype, device)
        if not 0 <= args.crf <= 51:
            raise ValueError(f'--crf must be in 0..51, got {args.crf}')
        source = FrameSource(args.input, args.fps)
        net, info = _network(args, device)
        io = info['io']
        if args.dtype == AUTO:
            onnx = isinstance(net, OnnxNetwork)  # runs fp32 (see _network)
            args.dtype, why = ('fp32', 'onnxruntime runs fp32') if onnx else auto_dtype(device, io.amx_dtype)
            dtype = parse_dtype(args.dtype, device)
            _log(f'--dtype auto: {args.dtype} ({why})')
        if dtype is not None and args.dtype not in io.dtypes:
            raise ValueError(f"--dtype {args.dtype}: {info['arch']} is not run in {args.dtype} (its spec allows "
                             f"{', '.join(('fp32',) + io.dtypes)})")
        model = FrameModel(net, io, device, dtype, args.scale)
        tiles = choose_tile(io, *model.input_size(source.height, source.width), args.tile, args.tile_overlap,
                            info['arch'])
        writer = open_writer(args.output, source, args.crf, args.preset, audio=not args.no_audio,
                             subtitles=not args.no_subtitles, log=_log, overwrite=args.overwrite)
        _log(f"{info['arch']} ({io.describe()}; from {info['source']}) x{model.scale}: {args.input} -> "
             f'{args.output}')
        _log(tiles.describe())
        count = upscale_video(model, source, writer, args.batch, args.chunk, args.chunk_overlap, tiles,
                              args.window_padding, progress=not args.quiet, log=_log)
    except KeyboardInterrupt:
        if writer is not None:
            writer.discard()
        _log('interrupted: no output written')
        return 130
    except (FileNotFoundError, KeyError, ValueError, OSError, RuntimeError, av.FFmpegError) as err:
        if writer is not None:
            writer.discard()
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        _log(f'error: {message}')
        return 1
    _log(f'wrote {count} frames to {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
