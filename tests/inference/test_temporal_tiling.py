"""Temporal chunks of tiled_forward / stream_forward: hand-built blends, streaming laziness, tiles x chunks."""
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from vsrkit.utils.tiling import stream_forward, tiled_forward

from analytic_nets import blend_chunks


def recurrent(x):
    """A stand-in recurrent network: (B, T, C, h, w) -> running sum over time, x2 nearest upscaling."""
    return F.interpolate(torch.cumsum(x, 1).flatten(0, 1), scale_factor=2).unflatten(0, x.shape[:2])


@pytest.fixture(scope='module')
def clip():
    photo = torch.from_numpy(data.astronaut()[::16, ::16]).permute(2, 0, 1).float() / 255  # 32x32
    return torch.stack([torch.roll(photo, 2 * t, dims=-1) for t in range(9)])[None]  # (1, 9, 3, 32, 32)


def hand_blend(x, starts, chunk, weights):
    total = torch.zeros(*recurrent(x[:, :1]).shape[:1], x.shape[1], *recurrent(x[:, :1]).shape[2:])
    norm = torch.zeros(x.shape[1])
    for start, w in zip(starts, weights):
        w = torch.tensor(w)
        total[:, start:start + chunk] += recurrent(x[:, start:start + chunk]) * w[None, :, None, None, None]
        norm[start:start + chunk] += w
    return total / norm[None, :, None, None, None]


def test_chunks_blend_like_a_hand_built_ramp(clip):
    # 9 frames, chunks of 4 sharing 2: starts 0, 2, 4, 5 (the last one ends at the last frame);
    # ramps 1/3, 2/3 over every shared pair, full weight at the clip's ends.
    up, down = [1 / 3, 2 / 3], [2 / 3, 1 / 3]
    expected = hand_blend(clip, [0, 2, 4, 5], 4, [[1, 1] + down, up + down, up + down, up + [1, 1]])
    torch.testing.assert_close(tiled_forward(recurrent, clip, 2, None, chunk=4, chunk_overlap=2), expected)
    # no overlap: plain consecutive chunks, the last one shifted back to end at the last frame
    expected = hand_blend(clip, [0, 4, 5], 4, [[1] * 4, [1] * 4, [1] * 4])
    torch.testing.assert_close(tiled_forward(recurrent, clip, 2, None, chunk=4, chunk_overlap=0), expected)


def test_a_chunk_covering_the_clip_is_one_call(clip):
    torch.testing.assert_close(tiled_forward(recurrent, clip, 2, None, chunk=9, chunk_overlap=3), recurrent(clip))
    torch.testing.assert_close(tiled_forward(recurrent, clip[:, :2], 2, None, chunk=4, chunk_overlap=3),
                               recurrent(clip[:, :2]))


def test_chunks_differ_from_one_call_for_a_recurrent_network(clip):
    chunked = tiled_forward(recurrent, clip, 2, None, chunk=4, chunk_overlap=2)
    assert not torch.allclose(chunked, recurrent(clip))  # the state is reset per chunk: blending is needed


@pytest.mark.parametrize('length', [9, 60])
def test_stream_is_lazy_and_equals_the_whole_clip_call(clip, length):
    x = clip.repeat(1, length // 9 + 1, 1, 1, 1)[:, :length]
    pulled = []

    def frames():  # a generator of unknown length
        for t in range(length):
            pulled.append(t)
            yield x[:, t]

    outputs, lag = [], []
    for out in stream_forward(lambda c: recurrent(c.movedim(0, 1)).movedim(1, 0), frames(), 2, chunk=4,
                              chunk_overlap=1):
        outputs.append(out)
        lag.append(len(pulled) - len(outputs))
    # against chunks blended independently (analytic_nets.blend_chunks), not against tiled_forward (which streams)
    expected = blend_chunks(lambda c: recurrent(torch.from_numpy(c)[None])[0].numpy(), x[0].double().numpy(), chunk=4,
                            overlap=1)
    torch.testing.assert_close(torch.stack(outputs, 1)[0].double(), torch.from_numpy(expected), rtol=1e-5,
                               atol=1e-5)
    # frames read but not yet output: at most two chunks less the overlap, plus one look-ahead frame,
    # whatever the clip length
    assert max(lag) <= 2 * 4 - 1 + 1
    assert lag[0] < length - 1  # the first frame came out before the stream was exhausted


def test_tiles_within_chunks(clip):
    # spatial tiles of a per-pixel network are exact, so tiles x chunks equal chunks alone
    whole = tiled_forward(recurrent, clip, 2, None, chunk=5, chunk_overlap=2)
    tiled = tiled_forward(recurrent, clip, 2, 12, overlap=4, multiple=4, chunk=5, chunk_overlap=2)
    torch.testing.assert_close(tiled, whole)


def test_bad_chunk_arguments(clip):
    with pytest.raises(ValueError, match='chunk_overlap'):
        tiled_forward(recurrent, clip, 2, None, chunk=4, chunk_overlap=4)
    with pytest.raises(ValueError, match=r'\(B, T, C, H, W\)'):
        tiled_forward(recurrent, clip[0], 2, None, chunk=4)
    assert list(stream_forward(lambda c: c, iter([]), 1, chunk=3)) == []
