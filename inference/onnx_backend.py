"""ONNX: export a single-frame network with dynamic batch, height and width, verified in ONNX Runtime before it is
kept, and run an exported file as the upscaler's network.

:func:`export_onnx` traces the network (torch's TorchScript-based exporter first; torch.export's when the
tracer's graph fails), runs the result in ONNX Runtime on a real photo at a size other than the traced one
(batch 2) and compares it with torch: max abs diff ≤ :data:`FP32_BOUND` in fp32, ≤ :data:`FP16_BOUND` for an
fp16 export (weights and activations in half precision: about three decimal digits on outputs in [0, 1]). A
network that does not trace, or whose export disagrees, raises :class:`ExportError` (one line) and nothing is
written. The file carries the network's :class:`~vsrkit.archs.spec.ModelIO` and architecture name as metadata, so
``vsrkit-upscale --model net.onnx`` feeds it as the checkpoint was fed (colour path, scale, padding, tiling).

Only single-frame networks are exported: sliding-window and recurrent networks keep state or frame windows whose
export vsrkit has not verified, and are refused with that reason.
"""
from __future__ import annotations

import io as bytes_io
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from skimage import data
from torch import nn
from torch.export import Dim

from vsrkit.archs.spec import ModelIO
from vsrkit.utils.atomic import atomic_write

FP32_BOUND = 1e-4
FP16_BOUND = 2e-2
DEFAULT_OPSET = 17
TRACE_SIZE = 32  # traced at 32x32, verified at another size: the dynamic axes are exercised


class ExportError(ValueError):
    """The network cannot be exported, or its export disagrees with torch."""


def _probe(io: ModelIO, batch: int, height: int, width: int) -> torch.Tensor:
    """A real photo (skimage's astronaut) as the network's input: RGB, or its luma for 1-channel networks."""
    size = max(height, io.min_size), max(width, io.min_size)
    size = tuple(s + (-s) % io.multiple for s in size)
    photo = cv2.resize(data.astronaut(), (size[1] * batch, size[0]), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    if io.in_channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
    return torch.stack(x.chunk(batch, dim=-1))


def _session(model: bytes | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the fp16 file's cast warnings are expected
    return ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


def export_onnx(net: nn.Module, io: ModelIO, arch: str, opset: int = DEFAULT_OPSET, fp16: bool = False) -> bytes:
    """The verified ONNX model of ``net`` (module docstring); raises :class:`ExportError`."""
    if io.temporal != 'frame':
        raise ExportError(f'{arch} is fed {io.describe()}: only single-frame networks are exported (the window or '
                          'recurrent state of this one has no verified ONNX form)')
    dtype = torch.float16 if fp16 else torch.float32
    x = _probe(io, 1, TRACE_SIZE, TRACE_SIZE).to(dtype)
    check = _probe(io, 2, TRACE_SIZE + 2 * io.multiple * max(1, 8 // io.multiple), TRACE_SIZE + io.multiple * 4)
    with torch.no_grad():
        want = net.float()(check).numpy()
    failures = []
    for exporter in (_trace_export, _dynamo_export):  # the TorchScript tracer first: faster, plainer graphs
        try:
            model = exporter(net.to(dtype).eval(), x, opset)
        except Exception as err:  # noqa: BLE001  (a tracing failure: the next exporter, else the refusal)
            failures.append(f'{exporter.__doc__}: {" ".join(str(err).split())[:200]}')
            continue
        for key, value in (('vsrkit.arch', arch), ('vsrkit.io', json.dumps(asdict(io)))):
            model.metadata_props.add(key=key, value=value)
        blob = model.SerializeToString()
        try:
            got = _session(blob).run(None, {'input': check.to(dtype).numpy()})[0].astype(np.float32)
        except Exception as err:  # noqa: BLE001  (ONNX Runtime rejects the graph: the next exporter)
            failures.append(f'{exporter.__doc__}: ONNX Runtime cannot run it ({" ".join(str(err).split())[:200]})')
            continue
        bound = FP16_BOUND if fp16 else FP32_BOUND
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float('inf')
        if diff <= bound:
            net.float()
            return blob
        failures.append(f'{exporter.__doc__}: differs from torch by {diff:.3g} (bound {bound:g})')
    net.float()
    raise ExportError(f'{arch}: no verified ONNX export, not written: ' + '; '.join(failures))


def _trace_export(module: nn.Module, x: torch.Tensor, opset: int) -> onnx.ModelProto:
    """TorchScript tracer"""
    axes = {0: 'batch', 2: 'height', 3: 'width'}
    buffer = bytes_io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tracer warnings about shape arithmetic; the check decides
        torch.onnx.export(module, (x,), buffer, input_names=['input'], output_names=['output'], opset_version=opset,
                          dynamic_axes={'input': axes, 'output': axes}, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def _dynamo_export(module: nn.Module, x: torch.Tensor, opset: int) -> onnx.ModelProto:
    """torch.export exporter"""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        program = torch.onnx.export(module, (x,), input_names=['input'], output_names=['output'],
                                    opset_version=max(opset, 18), dynamo=True, verbose=False,
                                    dynamic_shapes=({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},))
    return program.model_proto


def write_onnx(blob: bytes, path: str | Path) -> Path:
    """Write a verified export atomically."""
    return atomic_write(path, lambda handle: handle.write(blob))


class OnnxNetwork:
    """An ONNX Runtime session as the upscaler's network: (n, C, h, w) tensor → (n, C', H, W) float32 tensor."""

    def __init__(self, model: bytes | str | Path, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model) if isinstance(model, Path) else model, options,
                                            providers=['CPUExecutionProvider'])
        self.input = self.session.get_inputs()[0]
        self.half = self.input.type == 'tensor(float16)'

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy().astype(np.float16 if self.half else np.float32)
        out = self.session.run(None, {self.input.name: array})[0]
        return torch.from_numpy(out.astype(np.float32)).to(x.device)


def load_onnx(path: str | Path) -> tuple[OnnxNetwork, dict[str, Any]]:
    """(network, info) for a file written by :func:`export_onnx`, info as the torch loader's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'model {path} does not exist')
    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as err:  # noqa: BLE001  (a damaged file: one line)
        raise ValueError(f'cannot read ONNX model {path}: {err}') from None
    if 'vsrkit.io' not in meta:
        raise ValueError(f'{path}: no vsrkit.io metadata (how to feed it); export it with scripts/export_onnx.py')
    io = json.loads(meta['vsrkit.io'])
    io = ModelIO(**{**io, 'dtypes': tuple(io['dtypes'])})
    return OnnxNetwork(path), {'arch': meta.get('vsrkit.arch', 'onnx'), 'options': {}, 'io': io,
                               'source': 'onnx'}
