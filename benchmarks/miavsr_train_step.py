"""One recurrent MIA-VSR training step, per precision, vsrkit against the original code, alternating in one process.

The step of the official REDS recipe (options/miavsr_reds.yml, per GPU): a batch of 3 clips of 16 frames, 64x64 LR
and 256x256 GT crops, Charbonnier + 1e-4 x sparsity, Adam, EMA 0.999, SpyNet frozen (the first ``fix_flow``
iterations), the transformer blocks checkpointed (``use_checkpoint``). Precisions: fp32, fp16 autocast with
GradScaler (the recipe's), bf16 autocast.

- vsrkit: ``RecurrentVSRModel.optimize_parameters`` built from that options file (what vsrkit's loop and basicsr's
  train.py call each iteration: forward, losses, backward, scaler, optimizer, EMA).
- the original (whenever ../shared/reference/originals is present; ``--baseline off`` skips it): its MIAVSR in
  training mode with the same weights (strict load), the same input, and the same step written out as basicsr's
  loop runs it for the recipe: autocast forward, Charbonnier + 1e-4 x the mean of its keep masks, scaled backward,
  Adam, EMA.

Input: real frames, 256x256 crops of scikit-image's astronaut photo drifting a few pixels per frame, each clip from
another place; LR by area-averaging x4. Times: wall seconds per step, after ``--warmup`` steps of each, best and
median of ``--steps``, synchronised on CUDA; peak allocated GPU memory of a step.

Usage: python benchmarks/miavsr_train_step.py [--device cuda|cpu] [--batch 3] [--frames 16] [--size 64]
       [--precisions fp32,fp16,bf16 (CUDA) | fp32,bf16 (CPU)] [--steps 5] [--warmup 2] [--baseline auto|off]
"""
from __future__ import annotations

import argparse
import copy
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import vsrkit.models  # noqa: F401  (registers the model types)
from basicsr.losses.basic_loss import CharbonnierLoss
from vsrkit.engine.options import read_yaml
from vsrkit.utils.registry import MODEL_REGISTRY
from miavsr_speed import load_original_class  # this folder's speed benchmark: the same fixture, found the same way

ROOT = Path(__file__).resolve().parents[1]
AMP = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def photo_batch(batch: int, frames: int, size: int) -> dict[str, torch.Tensor]:
    """``lq`` (batch, frames, 3, size, size) and ``gt`` x4, from crops of the astronaut photo."""
    from skimage import data
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255  # (3, 512, 512)
    gt_size = 4 * size
    if gt_size + 3 * frames + 40 * batch > photo.shape[-1]:
        photo = F.interpolate(photo[None], scale_factor=2, mode='bicubic')[0].clamp(0, 1)
    gt = torch.stack([torch.stack([photo[:, 40 * b + 2 * i:40 * b + 2 * i + gt_size, 30 * b + 3 * i:30 * b + 3 * i + gt_size]
                                   for i in range(frames)]) for b in range(batch)])
    lq = F.avg_pool2d(gt.flatten(0, 1), 4).view(batch, frames, 3, size, size)
    return {'lq': lq, 'gt': gt}


def recipe(device: torch.device, precision: str) -> dict:
    """options/miavsr_reds.yml as a model's options on ``device`` with ``train.amp`` set to ``precision``."""
    opt = read_yaml(ROOT / 'options' / 'miavsr_reds.yml')
    opt['network_g']['spynet_path'] = None  # nothing is downloaded: random SpyNet weights time the same
    opt['train'].pop('scheduler')
    opt.update(is_train=True, device=str(device), path={})
    opt['train']['amp'] = {device.type: precision} if AMP[precision] else None
    return opt


class OriginalStep:
    """The original network's training step as basicsr's loop runs the recipe (see the module docstring)."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype | None, device: torch.device, train: dict) -> None:
        self.net, self.dtype, self.device = net.train(), dtype, device
        self.ema = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay = float(train['ema_decay'])
        for p in net.spynet.parameters():  # fix_flow: the recipe's first iterations
            p.requires_grad_(False)
        optim = train['optim_g']
        self.optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=optim['lr'],
                                          betas=tuple(optim['betas']), weight_decay=optim['weight_decay'])
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
        self.pixel = CharbonnierLoss()
        self.sparsity_weight = float(train['sparsity_opt']['loss_weight'])

    def __call__(self, data: dict[str, torch.Tensor]) -> float:
        lq, gt = (data[k].to(self.device) for k in ('lq', 'gt'))
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out, masks = self.net(lq)
            keep = torch.stack([m.float().mean() for m in _tensors(masks)]).mean()
            loss = self.pixel(out, gt) + self.sparsity_weight * keep
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            for ema, live in zip(self.ema.parameters(), self.net.parameters()):
                ema.lerp_(live, 1 - self.decay)
        return loss.item()


def _tensors(nested) -> list[torch.Tensor]:
    """Every tensor in the original's nested lists of keep masks."""
    if isinstance(nested, torch.Tensor):
        return [nested]
    return [t for item in nested or [] for t in _tensors(item)]


def timed(step, device: torch.device) -> tuple[float, float, float]:
    """(seconds, peak GB, loss) of one call of ``step``."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    loss = step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else float('nan')
    return seconds, peak, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch', type=int, default=3)
    parser.add_argument('--frames', type=int, default=16)
    parser.add_argument('--size', type=int, default=64, help='LR crop size (GT: 4x)')
    parser.add_argument('--precisions', default=None,
                        help='comma separated (default: fp32,fp16,bf16 on CUDA, fp32,bf16 on a CPU: fp16 needs CUDA)')
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--baseline', choices=('auto', 'off'), default='auto')
    args = parser.parse_args()
    device = torch.device(args.device)
    data = photo_batch(args.batch, args.frames, args.size)
    Original = load_original_class() if args.baseline == 'auto' else None
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'{name}: one MIA-VSR training step (REDS recipe), batch {args.batch} x {args.frames} frames, LR '
          f'{args.size}x{args.size}; warm-up {args.warmup}, then {args.steps} alternating steps of each')
    print(f'{"precision":9} {"vsrkit best":>11} {"vsrkit med":>10} {"orig best":>9} {"orig med":>8} {"x best":>6} '
          f'{"x med":>6} {"vsrkit GB":>9} {"orig GB":>7} {"vsrkit loss":>11} {"orig loss":>9}')
    precisions = args.precisions or ('fp32,fp16,bf16' if device.type == 'cuda' else 'fp32,bf16')
    for precision in precisions.split(','):
        opt = recipe(device, precision)
        torch.manual_seed(0)
        model = MODEL_REGISTRY.get('RecurrentVSRModel')(opt)
        steps = {'vsrkit': lambda i, model=model: _vsrkit_step(model, data, i)}
        if Original is not None:
            # the options its constructor has (it fixes mlp_ratio 2, drop path 0.1 and checkpointing itself)
            accepted = inspect.signature(Original).parameters
            network = {k: v for k, v in opt['network_g'].items() if k in accepted and k != 'spynet_path'}
            torch.manual_seed(0)
            original = Original(**network).to(device)
            original.load_state_dict(model.net_g.state_dict(), strict=True)
            original_step = OriginalStep(original, AMP[precision], device, opt['train'])
            steps['original'] = lambda i: original_step(data)
        results = {code: [] for code in steps}
        for i in range(args.warmup + args.steps):
            for code, step in list(steps.items()):
                try:
                    result = timed(lambda: step(i + 1), device)
                except RuntimeError as err:  # e.g. out of memory: said here, and the other code goes on
                    print(f'{precision}: {code} step failed: {str(err).splitlines()[0]}', flush=True)
                    del steps[code], results[code]
                    continue
                if i >= args.warmup:
                    results[code].append(result)
            print(f'  [{time.strftime("%H:%M:%S")}] {precision} step {i + 1}: ' + ', '.join(
                f'{code} {r[-1][0]:.3f} s' for code, r in results.items() if r), file=sys.stderr, flush=True)
        nan = (float('nan'),) * 4
        row = {code: (min(r[0] for r in res), statistics.median(r[0] for r in res), max(r[1] for r in res),
                      res[-1][2]) for code, res in results.items()}
        ours, theirs = row.get('vsrkit', nan), row.get('original', nan)
        print(f'{precision:9} {ours[0]:11.3f} {ours[1]:10.3f} {theirs[0]:9.3f} {theirs[1]:8.3f} '
              f'{theirs[0] / ours[0]:6.2f} {theirs[1] / ours[1]:6.2f} {ours[2]:9.2f} '
              f'{theirs[2]:7.2f} {ours[3]:11.4f} {theirs[3]:9.4f}', flush=True)
        del model, steps
    print('seconds per training step; x: original / vsrkit (same run); GB: peak allocated GPU memory of a step; '
          'loss: the last timed step\'s (vsrkit: pixel + sparsity terms as logged).')


def _vsrkit_step(model, data: dict[str, torch.Tensor], iteration: int) -> float:
    model.feed_data(data)
    model.optimize_parameters(iteration)
    return sum(model.get_current_log().values())


if __name__ == '__main__':
    main()
