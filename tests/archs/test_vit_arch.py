"""ViTSR: the seed checkpoint loads strictly and computes the seed's function; our additions are exact."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vsrkit.archs.vit_arch import ViTSR


def reference_forward(state: dict, x: torch.Tensor, depth: int = 4) -> torch.Tensor:
    """The seed's forward built from stock torch modules and the checkpoint tensors (independent of ViTSR)."""
    layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.1, batch_first=True).eval()
    prefix = 'transformer.layers.0.'
    layer.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    b, _, h, w = x.shape
    tokens = F.conv2d(x, state['patch_embed.weight'], state['patch_embed.bias'], padding=1).flatten(2).transpose(1, 2)
    for _ in range(depth):
        tokens = layer(tokens)
    feat = tokens.transpose(1, 2).reshape(b, 128, h, w)
    up = F.pixel_shuffle(F.conv2d(feat, state['upsample.0.weight'], state['upsample.0.bias'], padding=1), 2)
    return F.conv2d(up, state['upsample.2.weight'], state['upsample.2.bias'], padding=1).clamp(0, 1)


def test_seed_checkpoint_keys_and_strict_load(reference_checkpoint, reference_keys):
    state = torch.load(reference_checkpoint('vit_x2_seed_best_model.pth'), map_location='cpu', weights_only=True)
    model = ViTSR(share_weights=True)
    ours = model.state_dict()
    assert [(k, tuple(v.shape), str(v.dtype).replace('torch.', '')) for k, v in ours.items()] == reference_keys('vit_x2_seed')
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 215_776  # tied: parameters() deduplicates
    untied = ViTSR(share_weights=False)
    assert sum(p.numel() for p in untied.parameters()) == 810_592
    untied.load_state_dict(state, strict=True)  # the seed's file also loads into untied layers


def test_same_function_as_the_seed(reference_checkpoint):
    from skimage import data
    state = torch.load(reference_checkpoint('vit_x2_seed_best_model.pth'), map_location='cpu', weights_only=True)
    model = ViTSR().eval()
    model.load_state_dict(state)
    photo = torch.from_numpy(data.astronaut()[180:212, 200:236]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        ours, ref = model(photo), reference_forward(state, photo)
    assert ours.shape == (1, 3, 64, 72)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_checkpointing_changes_memory_not_gradients():
    torch.manual_seed(0)
    plain = ViTSR(embed_dim=32, num_heads=4, mlp_dim=64, depth=3, share_weights=False).train()
    ckpt = ViTSR(embed_dim=32, num_heads=4, mlp_dim=64, depth=3, share_weights=False, use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, y = torch.rand(2, 3, 12, 10), torch.rand(2, 3, 24, 20)
    grads = []
    for net in (plain, ckpt):
        torch.manual_seed(1)  # same dropout masks; checkpoint replays the RNG state in its recomputation
        net.zero_grad()
        F.l1_loss(net(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for g in grads[1].values())


def test_checkpointing_on_cuda_only_skips_it_on_cpu(monkeypatch):
    import vsrkit.archs.vit_arch as vit_arch
    calls = []
    monkeypatch.setattr(vit_arch, 'checkpoint', lambda fn, *a, **k: calls.append(1) or fn(*a))
    for setting, expected in ((True, 2), ('cuda', 0), (False, 0)):
        calls.clear()
        ViTSR(embed_dim=16, num_heads=2, mlp_dim=32, depth=2, use_checkpoint=setting)(torch.rand(1, 3, 4, 4)).sum().backward()
        assert len(calls) == expected, setting


def test_windowed_attention_equals_global_when_one_window_covers_the_image():
    torch.manual_seed(0)
    glob = ViTSR(embed_dim=32, num_heads=2, mlp_dim=64, depth=2).eval()
    win = ViTSR(embed_dim=32, num_heads=2, mlp_dim=64, depth=2, window_size=16).eval()
    win.load_state_dict(glob.state_dict())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(win(x), glob(x), atol=1e-5, rtol=0)
        odd = win(torch.rand(2, 3, 37, 45))  # padding + shifted windows on odd sizes
    assert odd.shape == (2, 3, 74, 90)


def test_shifted_window_mask_blocks_wrapped_neighbours():
    from vsrkit.archs.vit_arch import _shift_mask
    mask = _shift_mask(8, 8, 4, 2, torch.device('cpu'))  # (1, nW, 1, L, L)
    assert mask.shape == (1, 4, 1, 16, 16)
    assert mask[0, 0].all()  # the top-left window holds one region after the shift
    last = mask[0, 3, 0]
    assert not last.all() and last.diagonal().all()  # the bottom-right window mixes wrapped regions: masked


def test_attention_dropout_defaults_to_dropout_and_can_be_turned_off():
    assert ViTSR(dropout=0.1).transformer.layers[0].self_attn.attn_drop == 0.1  # the seed: MHA dropout = dropout
    layer = ViTSR(dropout=0.1, attn_dropout=0.0).transformer.layers[0]
    assert layer.self_attn.attn_drop == 0.0 and layer.dropout.p == 0.1


def test_bicubic_residual_starts_at_bicubic():
    model = ViTSR(embed_dim=32, num_heads=2, mlp_dim=64, depth=1, residual='bicubic').eval()
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        expected = F.interpolate(x, scale_factor=2, mode='bicubic', align_corners=False).clamp(0, 1)
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize('bad', [{'residual': 'nearest'}, {'window_size': 1}, {'embed_dim': 30, 'num_heads': 4},
                                 {'use_checkpoint': 'gpu'}])
def test_bad_constructor_arguments(bad):
    with pytest.raises(ValueError):
        ViTSR(**bad)
