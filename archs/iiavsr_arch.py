"""IIA-VSR: MIA-VSR's network without the adaptive mask (inter&intra-frame attention on every token).

Released with MIA-VSR (LabShuHangGU/MIA-VSR, ``archs/iia_vsr_arch.py``). Parameter and buffer names match the
original (no ``predmask``); the building blocks live in ``vsrkit.archs.mia_*`` and are the same as
MIA-VSR's, so IIA-VSR equals MIA-VSR with the mask disabled for the same shared weights.

Bug of the original fixed here: (b) its propagation walks every branch backwards in time with
``flow_idx = frame_idx``, so the forward branches warp with flows of the wrong direction (forward flows
indexed for a backward walk), and the forward branches' outputs stay in reversed order, so backward_2 and the
reconstruction pair features with the wrong frames. Here forward branches run forward in time with the
forward flows of the right frame pair (test in tests/archs/test_iiavsr_arch.py). MIA-VSR's fixes (a), (c), (d),
(e) apply too. (f) As published, the original's ``iia_sliding_arch.py`` has ``n, t, c, h, w = x.size()``
commented out in ``SwinIRFM.forward``, so it raises NameError on every forward, CPU or GPU: no IIA-VSR result can
have come from that file as released. Parity tests compare with a copy that un-comments it and restores
``if 'backward' in module_name:``.
"""
from __future__ import annotations

from typing import Sequence

from vsrkit.archs.mia_network import RecurrentInterIntraVSR
from vsrkit.archs.miavsr_arch import MIA_MASK_KEY, mia_io, mia_options
from vsrkit.archs.spec import ArchSpec, register_spec
from vsrkit.utils.registry import ARCH_REGISTRY, register


@register(ARCH_REGISTRY)
class IIAVSR(RecurrentInterIntraVSR):
    """IIA-VSR network (x4).

    Args: as ``MIAVSR`` (in_channels, mid_channels, embed_dim, depths, num_heads, window_size, num_frames,
    patch_size, mlp_ratio, drop_path_rate, is_low_res_input, spynet_path, use_checkpoint, skip), without the mask
    options.

    forward(lqs, return_keep_ratios=False): lqs (n, t, C, h, w) -> (n, t, C, 4h, 4w); with
    ``return_keep_ratios=True`` returns ``(output, None)`` (no mask), so training code can treat both alike.
    """

    def __init__(self, in_channels: int = 3, mid_channels: int = 64, embed_dim: int = 120,
                 depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: Sequence[int] = (3, 8, 8), num_frames: int = 3, patch_size: int = 1,
                 mlp_ratio: float = 2.0, drop_path_rate: float = 0.1, is_low_res_input: bool = True,
                 spynet_path: str | None = None, use_checkpoint: bool = False,
                 skip: str = 'bilinear') -> None:
        super().__init__(in_channels, mid_channels, embed_dim, depths, num_heads, window_size, num_frames,
                         patch_size, mlp_ratio, drop_path_rate, is_low_res_input, with_mask_predictor=False,
                         use_mask=False, gumbel_noise=False, mask_temperature=2 / 3, spynet_path=spynet_path,
                         use_checkpoint=use_checkpoint, skip=skip)


register_spec(ArchSpec(
    'IIAVSR', present=('patch_align.forward_2.layers.0.residual_group.blocks.0.attn.qkv.weight', 'conv_first.weight',
                       'spynet.basic_module.0.basic_module.0.weight'),
    absent=(MIA_MASK_KEY,), infer=mia_options, io=mia_io,
    notes='drop_path_rate and skip keep their defaults unless given'))
