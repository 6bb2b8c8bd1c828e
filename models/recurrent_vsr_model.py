"""RecurrentVSRModel: trains and validates recurrent video SR networks (MIA-VSR, IIA-VSR, BasicVSR-like).

The fed batch is ``lq`` (B, T, C, h, w) and ``gt`` (B, T, C, H, W) as the clip datasets give them
(``REDSClipDataset``, ``Vimeo90KClipDataset``). Losses (``train.<name>_opt``): a ``SparsityLoss`` gets the
network's keep ratios (the network is then called with ``return_keep_ratios=True``); every other loss, e.g.
basicsr's ``CharbonnierLoss`` as ``pixel_opt``, gets (output, gt).

Options of the original's recipe, under ``train``:
    fix_flow (int): the flow network (``spynet``) is frozen (requires_grad False) for the first ``fix_flow`` optimizer
        steps and trainable afterwards (BasicSR's VideoRecurrentModel). Under DDP this toggles which
        parameters get gradients, so ``find_unused_parameters`` is switched on when fix_flow is set.
    flow_lr_mul (float): the flow network's parameters form a second optimizer group with lr x flow_lr_mul
        (the scheduler scales both groups alike).
  Note: in MIA-VSR the flows only act through nearest-neighbour patch warping (and composing two flows
  bilinearly before that warping), whose gradient with respect to the flow is zero, so SpyNet's parameters
  receive zero gradients and do not change with either option; the options are kept so the recipe and
  networks whose warping is differentiable (BasicVSR-style bilinear warping) train as the original.

AMP, EMA, accumulation and checkpoints are ``TrainableModel``'s; validation uses the EMA weights.

Validation (``VideoClipTestDataset``; items are whole clips or temporal chunks of clips): every frame is
scored with ``val.metrics`` (basicsr metric options, e.g. PSNR on RGB and SSIM on Y with ``crop_border`` as
the official MIA-VSR scripts), optionally beside MATLAB-bicubic upscaling of the same LR frames
(``val.compare_bicubic``: ``bicubic_<metric>`` columns). ``val.center_frame_only: true`` scores only each
clip's centre frame (the Vimeo-90K-T protocol). ``val.chunk: {size, overlap}`` runs long clips through the
network in blended temporal chunks. One row per clip: the per-frame mean within the clip (chunk items of a
chunked dataset are merged frame-weighted, see ``vsrkit.evaluation.video_protocol``), averages over clips.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.utils import imwrite
from vsrkit.losses.sparsity_loss import SparsityLoss
from vsrkit.models.base import TrainableModel, unwrap
from vsrkit.utils.registry import MODEL_REGISTRY, register
from vsrkit.utils.color import bicubic_frame
from vsrkit.evaluation.video_protocol import merge_clip_rows, owned_frames, score_clip, upscale_frames

FLOW_MODULE = 'spynet'


@register(MODEL_REGISTRY)
class RecurrentVSRModel(TrainableModel):
    """Recurrent video SR model type (see module docstring)."""

    def __init__(self, opt: dict) -> None:
        train = opt.get('train') or {}
        self.fix_flow_iter = int(train.get('fix_flow') or 0)
        self.flow_lr_mul = float(train.get('flow_lr_mul', 1.0))
        if self.fix_flow_iter < 0 or self.flow_lr_mul < 0:
            raise ValueError(f'train.fix_flow and train.flow_lr_mul must be >= 0, got {self.fix_flow_iter} and '
                             f'{self.flow_lr_mul}')
        if opt.get('is_train') and self.fix_flow_iter:
            train.setdefault('find_unused_parameters', True)  # frozen flow parameters get no gradient under DDP
        self._chunking: tuple[int | None, int] = (None, 0)
        super().__init__(opt)

    # ---------------------------------------------------------------- flow network
    def flow_parameters(self) -> list[torch.nn.Parameter]:
        module = getattr(unwrap(self.net_g), FLOW_MODULE, None)
        return list(module.parameters()) if module is not None else []

    def optimizer_param_groups(self) -> list[dict]:
        flow_ids = {id(p) for p in self.flow_parameters()}
        if (self.fix_flow_iter or self.flow_lr_mul != 1.0) and not flow_ids:
            raise ValueError(f"train.fix_flow / train.flow_lr_mul: {self.opt['network_g']['type']} has no "
                             f"'{FLOW_MODULE}' submodule")
        main = [p for p in self.net_g.parameters() if p.requires_grad and id(p) not in flow_ids]
        if not flow_ids:
            return [{'params': main}]
        # All flow parameters are in the optimizer even while frozen by fix_flow; Adam skips them until then.
        lr = float(self.opt['train']['optim_g']['lr']) * self.flow_lr_mul
        return [{'params': main}, {'params': self.flow_parameters(), 'lr': lr}]

    def set_flow_trainable(self, current_iter: int) -> None:
        """Frozen for iterations 1..fix_flow, trainable afterwards (no-op without fix_flow)."""
        if self.fix_flow_iter:
            trainable = current_iter > self.fix_flow_iter
            for param in self.flow_parameters():
                param.requires_grad_(trainable)

    # ---------------------------------------------------------------- training
    def compute_losses(self, current_iter: int) -> dict[str, torch.Tensor]:
        self.set_flow_trainable(self.iteration)  # optimizer steps, also under basicsr's loop (micro-batches)
        sparsity = {name for name, loss in self.losses.items() if isinstance(loss, SparsityLoss)}
        if sparsity:
            self.output, ratios = self.net_g(self.lq, return_keep_ratios=True)
            if ratios is None:
                raise ValueError(f"train.{next(iter(sparsity))}_opt: {self.opt['network_g']['type']} returned no "
                                 'keep ratios (mask off, no mask predictor, or a one-frame clip); remove the '
                                 'sparsity loss or enable the mask')
        else:
            self.output, ratios = self.net_g(self.lq), None
        if self.output.shape != self.gt.shape:
            raise ValueError(f'network output {tuple(self.output.shape)} does not match gt {tuple(self.gt.shape)}')
        return {f'l_{name}': loss(ratios) if name in sparsity else loss(self.output, self.gt)
                for name, loss in self.losses.items()}

    # ---------------------------------------------------------------- validation
    def validation(self, dataloader, current_iter: int, tb_logger=None, save_img: bool = False) -> dict[str, float]:
        """TrainableModel.validation over clips or chunks (chunk rows merged per clip, frame-weighted); the averages
        are over clips. Takes vsrkit's ``VideoClipTestDataset`` or basicsr's ``VideoRecurrentTestDataset``."""
        dataset = dataloader.dataset if hasattr(dataloader, 'dataset') else dataloader
        opt = getattr(dataset, 'opt', None) or {}
        self._chunking = (opt.get('chunk_size'), int(opt.get('chunk_overlap') or 0))
        return super().validation(dataset, current_iter, tb_logger, save_img)

    def merge_rows(self, rows: list[dict]) -> list[dict]:
        return merge_clip_rows(rows)

    def validate_sample(self, sample: dict, current_iter: int, save_img: bool) -> dict[str, Any]:
        val = self.opt.get('val') or {}
        metrics = val.get('metrics') or {}
        if 'gt' not in sample or not metrics:
            raise ValueError('RecurrentVSRModel validation needs GT frames and val.metrics')
        lq, gt = sample['lq'], sample['gt']
        length = lq.shape[0]
        start = int(sample.get('frame_start', 0))
        clip_length = int(sample.get('num_frames_clip', length))
        owned = range(start, start + length)
        if length < clip_length:
            owned = owned_frames(start, length, clip_length, self._chunking[1])
        if val.get('center_frame_only'):
            centre = clip_length // 2
            owned = range(centre, centre + 1) if centre in owned else range(0)
        if not owned:  # a chunk that owns no scored frame contributes nothing
            return {'name': str(sample.get('folder', 'clip')), 'frames': 0,
                    **{f'{p}{m}': 0.0 for p in self._prefixes(val) for m in metrics}}
        name = str(sample.get('folder', sample.get('key', 'clip')))
        scale = int(self.opt.get('scale', 4))
        chunk = (val.get('chunk') or {})
        indices = range(start, start + length)
        candidates = {'': upscale_frames(self.inference_net, lq.unbind(0), scale, chunk.get('size'),
                                         int(chunk.get('overlap', 0)), self.amp_dtype_for_eval())}
        if val.get('compare_bicubic'):
            candidates['bicubic_'] = (bicubic_frame(frame, scale) for frame in lq.unbind(0))
        row: dict[str, Any] = {'name': name}
        for prefix, frames in candidates.items():
            on_frame = None
            if save_img and not prefix:
                folder = Path(self.opt['path'].get('visualization', self.opt['path']['experiments_root']))

                def on_frame(index, image, folder=folder):
                    imwrite(image, str(folder / name.replace('/', '_') / f'{index:08d}_{current_iter}.png'))
            means, count = score_clip(frames, gt.unbind(0), metrics, indices, owned.__contains__, on_frame)
            row['frames'] = count
            row.update({prefix + k: v for k, v in means.items()})
        return row

    @staticmethod
    def _prefixes(val: dict) -> list[str]:
        return [''] + (['bicubic_'] if val.get('compare_bicubic') else [])

    def amp_dtype_for_eval(self) -> torch.dtype | None:
        """Validation runs in the training AMP dtype (None outside training or without AMP)."""
        return getattr(self, 'amp_dtype', None)
