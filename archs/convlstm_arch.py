"""ConvLSTM frame interpolator of the spatio-temporal fusion pipeline.

From iSiddharth20/Generative-AI-Based-Spatio-Temporal-Fusion (``Code/lstm_model.py``, identical at v3.0 and at the
repository head; the parameter names ``cells.N.conv.{weight,bias}`` are kept, so its state dicts load with
``strict=True``).

What it computes. ``forward`` takes a sequence of known frames ``x`` of shape (B, T, C, H, W) and returns
``(frames, state)``: ``frames`` has shape (B, T, hidden_dims[-1], H, W), where ``frames[:, t]`` for t < T-1 is the
frame predicted *between* known frames t and t+1, and ``frames[:, T-1]`` is the frame predicted *after* the last
known one. (The original trains it on even frames of a clip with the odd frames as targets and, at inference,
interleaves known and predicted frames: x0, y0, x1, y1, ….) The recurrence steps through
``x0, b0, x1, b1, …, b_{T-3}, x_{T-2}, x_{T-1}`` with the blended frames ``b_t = (1-α)·x_t + α·x_{t+1}`` (α = 0.5
in training, 0.6 at the original's inference), and the prediction for slot t is the top layer's hidden state right
after it read x_t. Initial states are zeros unless ``state`` is given.

The original's bug, kept by default: every layer reads the raw input sequence instead of the layer below's hidden
states, so only the last cell influences the output and the other layers are dead weight. The default
(``stack_layers=False``) reproduces that function exactly, so the published weights behave as trained;
``stack_layers=True`` is a true stacked ConvLSTM (layer l reads layer l-1's hidden state at every step).

Differences from the original that do not change ``frames``: the returned ``state`` is every layer's (h, c) after
the last step (the original returns, and never uses, the states from before its final x_{T-1} step), and a given
``state`` list is not modified in place.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vsrkit.archs.spec import ArchSpec, ModelIO, count_indices, register_spec
from vsrkit.utils.registry import ARCH_REGISTRY, register

State = list[tuple[torch.Tensor, torch.Tensor]]


@register(ARCH_REGISTRY)
class ConvLSTMCell(nn.Module):
    """One ConvLSTM cell: a single conv over [input, h] gives the i, f, o, g gates (in that order).

    ``c' = σ(f)·c + σ(i)·tanh(g)``, ``h' = σ(o)·tanh(c')``.

    Args:
        input_dim: channels of the input.
        hidden_dim: channels of h and c.
        kernel_size: conv kernel (int or (kh, kw), odd, 'same' padding).
    """

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int | Sequence[int] = 3) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f'ConvLSTMCell kernel_size must be odd (same padding), got {kernel_size}')
        self.hidden_dim = hidden_dim
        self.conv = nn.Conv2d(input_dim + hidden_dim, 4 * hidden_dim, (kh, kw), padding=(kh // 2, kw // 2))

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, input_dim, H, W); state: (h, c), each (B, hidden_dim, H, W) → the next (h, c)."""
        h, c = state
        i, f, o, g = self.conv(torch.cat([x, h], dim=1)).split(self.hidden_dim, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


@register(ARCH_REGISTRY)
class ConvLSTM(nn.Module):
    """Interpolating ConvLSTM (see module docstring for the exact input/output contract).

    Args:
        input_dim: channels of each input frame (1, grey).
        hidden_dims: hidden channels per layer; the last is the output frames' channel count.
        kernel_size: conv kernel of every cell.
        num_layers: number of layers; must equal ``len(hidden_dims)`` (kept for the original's signature).
        alpha: weight of the next frame in the blended in-between steps, ``(1-α)·x_t + α·x_{t+1}``.
        stack_layers: False (default) = the original's behaviour, every layer reads the raw frames (its bug);
            True = layer l reads layer l-1's hidden state.
    """

    def __init__(self, input_dim: int = 1, hidden_dims: Sequence[int] = (1, 1, 1),
                 kernel_size: int | Sequence[int] = 3, num_layers: int = 3, alpha: float = 0.5,
                 stack_layers: bool = False) -> None:
        super().__init__()
        if len(hidden_dims) != num_layers:
            raise ValueError(f'ConvLSTM hidden_dims must have num_layers = {num_layers} entries, got {hidden_dims}')
        self.hidden_dims = [int(d) for d in hidden_dims]
        self.alpha = alpha
        self.stack_layers = stack_layers
        in_dims = [input_dim] + (self.hidden_dims[:-1] if stack_layers else [input_dim] * (num_layers - 1))
        self.cells = nn.ModuleList(ConvLSTMCell(d_in, d_h, kernel_size) for d_in, d_h in zip(in_dims, self.hidden_dims))

    def init_state(self, batch: int, height: int, width: int) -> State:
        """Zero (h, c) for every layer."""
        ref = self.cells[0].conv.weight
        return [(ref.new_zeros(batch, d, height, width), ref.new_zeros(batch, d, height, width))
                for d in self.hidden_dims]

    def _step(self, x: torch.Tensor, state: State) -> State:
        new_state = []
        layer_input = x
        for cell, hc in zip(self.cells, state):
            h, c = cell(layer_input, hc)
            new_state.append((h, c))
            if self.stack_layers:
                layer_input = h
        return new_state

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x: (B, T, C, H, W) known frames, T >= 1 → ((B, T, hidden_dims[-1], H, W) predicted frames, state).

        ``state``: optional per-layer (h, c) to start from (e.g. the one returned by a previous call); zeros if None.
        """
        if x.dim() != 5:
            raise ValueError(f'ConvLSTM expects (B, T, C, H, W) input, got shape {tuple(x.shape)}')
        b, t_len, _, height, width = x.shape
        state = self.init_state(b, height, width) if state is None else list(state)
        frames = []
        for t in range(t_len):
            state = self._step(x[:, t], state)
            frames.append(state[-1][0])
            # The original feeds no blend before the final frame: the last slot extrapolates past x_{T-1}.
            if t < t_len - 2:
                state = self._step((1 - self.alpha) * x[:, t] + self.alpha * x[:, t + 1], state)
        return torch.stack(frames, dim=1), state


def _infer(s: dict[str, torch.Tensor]) -> dict:
    n = count_indices(s, r'cells\.(\d+)\.conv\.weight')
    weights = [s[f'cells.{i}.conv.weight'] for i in range(n)]
    hidden = [w.shape[0] // 4 for w in weights]  # the four gates' convs are one conv
    inputs = [w.shape[1] - h for w, h in zip(weights, hidden)]
    # Stacked only when the shapes prove it: later layers read the previous width and that is not input_dim.
    stacked = n > 1 and inputs[1:] == hidden[:-1] and inputs[1:] != [inputs[0]] * (n - 1)
    return {'input_dim': inputs[0], 'hidden_dims': hidden, 'num_layers': n,
            'kernel_size': list(weights[0].shape[2:]), 'stack_layers': stacked}


register_spec(ArchSpec(
    'ConvLSTM', present=('cells.0.conv.weight',), infer=_infer,
    io=lambda o: ModelIO('clip', 'grey', o['input_dim'], list(o['hidden_dims'])[-1], 1),
    notes='alpha keeps its default (0.5) unless given'))
