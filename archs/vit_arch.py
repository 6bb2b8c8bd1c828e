"""ViTSR: the seed's per-pixel Vision Transformer for 2x video/image super-resolution.

Every LR pixel is one token (a 3x3 conv embeds it, no positional embedding), a post-norm Transformer
encoder mixes the tokens, and a conv + PixelShuffle head upsamples. The parameter names match the seed's
``best_model.pth`` (``patch_embed``, ``transformer.layers.N.{self_attn,linear1,linear2,norm1,norm2}``,
``upsample.{0,2}``), so its checkpoint loads with ``strict=True``; ``share_weights=True`` reproduces the
seed's weight tying (one layer instance repeated ``depth`` times).

What we add, each off by default so the seed's function is unchanged:
- attention through ``F.scaled_dot_product_attention``: memory linear in tokens (the seed's
  ``nn.MultiheadAttention`` materialises the N x N matrix, 67 GB for one 480x270 frame);
- ``window_size``: Swin-style windows (alternate layers shifted by half a window, with the cyclic-shift
  mask), so time is linear in pixels too;
- ``use_checkpoint``: recompute each layer in backward (changes memory, not results);
- ``residual='bicubic'``: predict a residual over bicubic upscaling, with the head's last conv
  zero-initialised so an untrained model starts exactly at bicubic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vsrkit.archs.spec import ArchSpec, count_indices, register_spec, scale_from_channels, single_frame_io
from vsrkit.utils.registry import ARCH_REGISTRY, register


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout (packed in-projection)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (..., N, C) token groups attended independently; mask: boolean, True = may attend."""
        *lead, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(*lead, n, 3, self.num_heads, c // self.num_heads).movedim(-3, 0).transpose(-2, -3)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.out_proj(out.transpose(-2, -3).reshape(*lead, n, c))


class EncoderLayer(nn.Module):
    """Post-norm Transformer encoder layer, numerically ``nn.TransformerEncoderLayer(batch_first=True)``."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads, attn_dropout)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.dropout1(self.self_attn(x, mask)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class _Encoder(nn.Module):
    """Holds ``layers`` so that parameter names read ``transformer.layers.N.…`` as in the seed."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ws -> (B, nH*nW, ws*ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def _window_merge(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b, _, _, c = x.shape
    x = x.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def _shift_mask(h: int, w: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
    """Swin's mask for cyclically shifted windows: tokens may attend only within their original region."""
    region = torch.zeros(1, h, w, 1, device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for wsl in cuts:
            region[:, hs, wsl, :] = label
            label += 1
    ids = _window_partition(region, ws).squeeze(-1)  # (1, nW, ws*ws)
    return (ids.unsqueeze(-1) == ids.unsqueeze(-2)).unsqueeze(2)  # (1, nW, 1, L, L), broadcast over heads


@register(ARCH_REGISTRY)
class ViTSR(nn.Module):
    """Per-pixel ViT super-resolution network (the seed's architecture, see module docstring).

    Args:
        in_chans: image channels in and out.
        embed_dim: token width.
        num_heads: attention heads.
        depth: number of encoder layers.
        mlp_dim: hidden width of each layer's feed-forward block.
        dropout: dropout in attention and feed-forward (``nn.TransformerEncoderLayer``'s ``dropout``).
        attn_dropout: dropout on the attention weights; None (the seed) means ``dropout``. Any non-zero value
            makes torch's SDPA fall back to its math kernel on CPU, which stores the N x N weights (4 GB for
            16 patches of 64x64 LR in training); 0 keeps training memory linear in tokens.
        scale: upscaling factor (PixelShuffle).
        share_weights: one layer instance repeated ``depth`` times (the seed) instead of ``depth`` layers.
        window_size: None for global attention over all pixels (the seed); an int for shifted windows.
        use_checkpoint: recompute each layer during backward to save activation memory: True, False, or
            'cuda' (only for inputs on a GPU, where memory is scarce; on CPU it would only cost time).
        residual: None (the seed) or 'bicubic': add bicubic upscaling of the input to the head's output.
        clamp_output: clamp to [0, 1] as the seed does.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 128, num_heads: int = 4, depth: int = 4,
                 mlp_dim: int = 512, dropout: float = 0.1, attn_dropout: float | None = None, scale: int = 2,
                 share_weights: bool = True,
                 window_size: int | None = None, use_checkpoint: bool | str = False, residual: str | None = None,
                 clamp_output: bool = True) -> None:
        super().__init__()
        if residual not in (None, 'bicubic'):
            raise ValueError(f"ViTSR residual must be None or 'bicubic', got {residual!r}")
        if use_checkpoint not in (True, False, 'cuda'):
            raise ValueError(f"ViTSR use_checkpoint must be true, false or 'cuda', got {use_checkpoint!r}")
        if window_size is not None and window_size < 2:
            raise ValueError(f'ViTSR window_size must be None or >= 2, got {window_size}')
        self.scale = scale
        self.window_size = window_size
        self.use_checkpoint = use_checkpoint
        self.residual = residual
        self.clamp_output = clamp_output
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, 3, padding=1)
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        if share_weights:
            layers = [EncoderLayer(embed_dim, num_heads, mlp_dim, dropout, attn_dropout)] * depth
        else:
            layers = [EncoderLayer(embed_dim, num_heads, mlp_dim, dropout, attn_dropout) for _ in range(depth)]
        self.transformer = _Encoder(layers)
        self.upsample = nn.Sequential(
            nn.Conv2d(embed_dim, in_chans * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale),
            nn.Conv2d(in_chans, in_chans, 3, padding=1),
        )
        if residual == 'bicubic':
            nn.init.zeros_(self.upsample[2].weight)
            nn.init.zeros_(self.upsample[2].bias)

    def _run_layer(self, layer: nn.Module, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        wanted = self.use_checkpoint is True or (self.use_checkpoint == 'cuda' and tokens.is_cuda)
        if wanted and torch.is_grad_enabled():
            return checkpoint(layer, tokens, mask, use_reentrant=False)
        return layer(tokens, mask)

    def _encode_global(self, feat: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feat.shape
        tokens = feat.flatten(2).transpose(1, 2)
        for layer in self.transformer.layers:
            tokens = self._run_layer(layer, tokens, None)
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def _encode_windowed(self, feat: torch.Tensor) -> torch.Tensor:
        ws = self.window_size
        b, c, h, w = feat.shape
        ph, pw = (-h) % ws, (-w) % ws
        # Reflect-pad the features (not zeros) so border windows see image-like context; cropped afterwards.
        x = F.pad(feat, (0, pw, 0, ph), mode='reflect' if min(h, w) > max(ph, pw) else 'replicate')
        x = x.permute(0, 2, 3, 1)
        hp, wp = h + ph, w + pw
        shift = ws // 2
        shifted_mask = _shift_mask(hp, wp, ws, shift, x.device) if min(hp, wp) > ws else None
        for i, layer in enumerate(self.transformer.layers):
            shifted = i % 2 == 1 and shifted_mask is not None
            if shifted:
                x = torch.roll(x, (-shift, -shift), dims=(1, 2))
            windows = self._run_layer(layer, _window_partition(x, ws), shifted_mask if shifted else None)
            x = _window_merge(windows, ws, hp, wp)
            if shifted:
                x = torch.roll(x, (shift, shift), dims=(1, 2))
        return x[:, :h, :w].permute(0, 3, 1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.patch_embed(x)
        feat = self._encode_global(feat) if self.window_size is None else self._encode_windowed(feat)
        out = self.upsample(feat)
        if self.residual == 'bicubic':
            out = out + F.interpolate(x, scale_factor=self.scale, mode='bicubic', align_corners=False)
        return out.clamp(0, 1) if self.clamp_output else out


def _infer(s: dict[str, torch.Tensor]) -> dict:
    depth = count_indices(s, r'transformer\.layers\.(\d+)\.')
    embed_dim, in_chans = s['patch_embed.weight'].shape[:2]
    layer_keys = [k[len('transformer.layers.0.'):] for k in s if k.startswith('transformer.layers.0.')]
    # A tied checkpoint stores the one shared layer under every index: equal tensors tell it apart.
    tied = all(torch.equal(s[f'transformer.layers.0.{k}'], s[f'transformer.layers.{i}.{k}'])
               for i in range(1, depth) for k in layer_keys)
    return {'in_chans': in_chans, 'embed_dim': embed_dim, 'depth': depth,
            'mlp_dim': s['transformer.layers.0.linear1.weight'].shape[0],
            'scale': scale_from_channels(s['upsample.0.weight'].shape[0], in_chans, 'upsample.0.weight'),
            'share_weights': tied}


register_spec(ArchSpec(
    'ViTSR', present=('patch_embed.weight', 'transformer.layers.0.self_attn.in_proj_weight', 'upsample.0.weight'),
    infer=_infer,
    # Global attention (window_size None, the seed) is quadratic in pixels: callers tile large frames. bf16 on an
    # AMX CPU: vsrkit-upscale with the seed's published weights at 64x48 LR 12.9 against 6.1 frames/s in fp32
    # (benchmarks/video_stream.py, 2 threads), its output 50.9 dB from the fp32 output (astronaut, 64x48)
    io=lambda o: single_frame_io(o['in_chans'], o['in_chans'], o['scale'],
                                 cost='global' if o['window_size'] is None else 'local', amx_dtype='bf16'),
    notes='num_heads (hidden by the packed in-projection; default 4, the seed), window_size and residual keep '
          'their defaults unless given'))
