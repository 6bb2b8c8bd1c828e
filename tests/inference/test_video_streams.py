"""What vsrkit-upscale keeps besides the pictures: every audio and subtitle stream (a Matroska file built here with
PyAV: two audio tracks and a subtitle track), rotation and colour tags, RGBA frames (alpha upscaled apart) and
16-bit PNG frames (processed and written at 16 bits); and one line for whatever an output cannot hold."""
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import torch
from skimage import data

import vsrkit.utils  # noqa: F401  (basicsr compatibility shim)
from basicsr.utils.matlab_functions import imresize
from vsrkit.inference_scripts.upscale_video import main

from analytic_nets import sharpening_elsr, sharpening_reference, to_uint8

BT709 = 1  # FFmpeg's AVCOL_SPC / AVCOL_PRI / AVCOL_TRC value for ITU-R BT.709
COLOURS = [(200, 30, 40), (20, 180, 60), (40, 50, 210), (220, 200, 30)]  # saturated: the matrix matters


def build_mkv(path, frames=8, size=(48, 32)):
    """H.264 (BT.709 tags, displayed rotated by 90°) + AAC + FLAC + SubRip, muxed by PyAV."""
    with av.open(str(path), 'w') as out:
        video = out.add_stream('libx264', rate=25)
        video.width, video.height, video.pix_fmt = size[0], size[1], 'yuv420p'
        ctx = video.codec_context
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = BT709
        ctx.color_range = 1  # limited ("MPEG") range
        video.set_display_rotation(90)
        tones = [(out.add_stream('aac', rate=16000), 'fltp', 440), (out.add_stream('flac', rate=16000), 's16', 660)]
        for stream, _, _ in tones:
            stream.layout = 'mono'
        subtitles = out.add_mux_stream('subrip', time_base=Fraction(1, 1000))
        for i in range(frames):
            image = np.empty((size[1], size[0], 3), np.uint8)
            image[:] = COLOURS[i % len(COLOURS)]
            frame = av.VideoFrame.from_ndarray(image, format='rgb24').reformat(
                format='yuv420p', dst_colorspace=BT709, dst_color_range=1)
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        samples = 16000 * frames // 25
        for stream, fmt, freq in tones:
            wave = 0.3 * np.sin(2 * np.pi * freq * np.arange(samples) / 16000)
            for start in range(0, samples, 1024):
                chunk = wave[None, start:start + 1024]
                chunk = chunk.astype(np.float32) if fmt == 'fltp' else (chunk * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(chunk.copy(), format=fmt, layout='mono')
                frame.sample_rate, frame.pts = 16000, start
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        for k, text in enumerate((b'first line', b'second line')):
            packet = av.Packet(text)
            packet.stream, packet.time_base = subtitles, Fraction(1, 1000)
            packet.pts = packet.dts = 100 + 120 * k
            packet.duration = 100
            out.mux(packet)
    return path


def packets(path):
    """{stream index: (type, codec, [packet bytes])} for every stream but the video."""
    with av.open(str(path)) as container:
        found = {s.index: (s.type, s.codec_context.name, []) for s in container.streams if s.type != 'video'}
        for packet in container.demux():
            if packet.size and packet.stream.type != 'video':
                found[packet.stream.index][2].append(bytes(packet))
    return found


def first_frame(path):
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame, frame.to_ndarray(format='rgb24')


@pytest.fixture(scope='module')
def mkv(tmp_path_factory):
    root = tmp_path_factory.mktemp('streams')
    torch.save({'params': sharpening_elsr(2).state_dict()}, root / 'elsr.pth')
    return build_mkv(root / 'in.mkv'), root / 'elsr.pth'


def test_mkv_keeps_both_audio_tracks_the_subtitles_rotation_and_colours(mkv, tmp_path):
    source, ckpt = mkv
    out = tmp_path / 'out.mkv'
    assert main([str(source), str(out), '--model', str(ckpt), '--quiet']) == 0
    original = packets(source)
    assert [(t, c) for t, c, _ in original.values()] == [('audio', 'aac'), ('audio', 'flac'), ('subtitle', 'srt')]
    assert packets(out) == original  # every packet, byte for byte: remuxed, not re-encoded
    frame_in, rgb_in = first_frame(source)
    frame_out, rgb_out = first_frame(out)
    assert frame_in.rotation == frame_out.rotation == 90
    for tag in ('colorspace', 'color_primaries', 'color_trc'):
        assert int(getattr(frame_out, tag)) == BT709, tag
    # a flat colour through the nearest-upscaling network: the same colour comes back when the output's
    # matrix is the one it is tagged with (BT.601 numbers under BT.709 tags are ~10 levels off for these colours)
    centre = rgb_out[8:-8, 8:-8].reshape(-1, 3).astype(int)
    assert np.abs(centre - rgb_in[16, 24].astype(int)).max() <= 3


def test_mp4_names_the_stream_it_cannot_hold_and_keeps_the_others(mkv, tmp_path, capsys):
    source, ckpt = mkv
    out = tmp_path / 'out.mp4'
    assert main([str(source), str(out), '--model', str(ckpt), '--quiet']) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith('not copied')]
    assert notes == ['not copied: subtitle stream #3 (srt): mp4 cannot hold srt; use .mkv']
    kept = packets(out)
    assert [(t, c) for t, c, _ in kept.values()] == [('audio', 'aac'), ('audio', 'flac')]
    assert [p for _, _, p in kept.values()] == [p for _, _, p in list(packets(source).values())[:2]]


def test_stream_flags_drop_only_their_kind(mkv, tmp_path):
    source, ckpt = mkv
    assert main([str(source), str(tmp_path / 'a.mkv'), '--model', str(ckpt), '--no-subtitles', '--quiet']) == 0
    assert [t for t, _, _ in packets(tmp_path / 'a.mkv').values()] == ['audio', 'audio']
    assert main([str(source), str(tmp_path / 's.mkv'), '--model', str(ckpt), '--no-audio', '--quiet']) == 0
    assert [t for t, _, _ in packets(tmp_path / 's.mkv').values()] == ['subtitle']


# ------------------------------------------------------------------------------------------------ RGBA, 16-bit
def photo_frames(count=2, size=(40, 32)):
    photo = cv2.resize(data.astronaut(), size, interpolation=cv2.INTER_AREA)
    return [np.roll(photo, 3 * i, axis=1) for i in range(count)]


def test_rgba_alpha_is_upscaled_apart_into_png_and_named_when_dropped(tmp_path, capsys):
    folder = tmp_path / 'rgba'
    folder.mkdir()
    frames = photo_frames()
    yy, xx = np.mgrid[:32, :40]
    alpha = (255 * np.clip((xx - 8) / 24 + 0.2 * np.sin(yy / 3), 0, 1)).round().astype(np.uint8)  # edges and ramps
    for i, image in enumerate(frames):
        cv2.imwrite(str(folder / f'{i}.png'), np.dstack([image[..., ::-1], alpha]))
    ckpt = tmp_path / 'elsr.pth'
    torch.save({'params': sharpening_elsr(2).state_dict()}, ckpt)
    assert main([str(folder), str(tmp_path / 'out'), '--model', str(ckpt), '--quiet']) == 0
    written = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((tmp_path / 'out').glob('*.png'))]
    assert len(written) == 2 and written[0].shape == (64, 80, 4) and written[0].dtype == np.uint8
    expected_alpha = to_uint8(imresize(alpha / 255.0, 2))  # MATLAB bicubic of the alpha alone
    for image, got in zip(frames, written):
        rgb = got[..., 2::-1].astype(int)
        assert np.abs(rgb - to_uint8(sharpening_reference(image / 255.0))).max() <= 1  # colour as without alpha
        assert np.abs(got[..., 3].astype(int) - expected_alpha).max() <= 1
    capsys.readouterr()
    assert main([str(folder), str(tmp_path / 'out.mp4'), '--model', str(ckpt), '--quiet']) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith('note:')]
    assert len(notes) == 1 and 'alpha' in notes[0] and 'dropped' in notes[0] and 'out.mp4' in notes[0]


def test_16_bit_png_frames_stay_16_bit(tmp_path, capsys):
    folder = tmp_path / 'deep'
    folder.mkdir()
    rng = np.random.default_rng(0)
    frames = [(f.astype(np.uint16) * 257 + rng.integers(0, 200, f.shape)).astype(np.uint16) for f in photo_frames()]
    for i, image in enumerate(frames):
        cv2.imwrite(str(folder / f'{i}.png'), image[..., ::-1])
    ckpt = tmp_path / 'elsr.pth'
    torch.save({'params': sharpening_elsr(2).state_dict()}, ckpt)
    assert main([str(folder), str(tmp_path / 'out'), '--model', str(ckpt), '--quiet']) == 0
    written = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[..., ::-1] for p in sorted((tmp_path / 'out').glob('*.png'))]
    assert written[0].dtype == np.uint16 and written[0].shape == (64, 80, 3)
    for image, got in zip(frames, written):
        expected = np.clip(np.round(sharpening_reference(image / 65535.0) * 65535), 0, 65535)
        assert np.abs(got.astype(np.int64) - expected).max() <= 2  # float32 network at 16 bits
        inside = (expected > 0) & (expected < 65535)
        assert (got[inside] % 257 != 0).mean() > 0.9  # not 8-bit values stretched: the low bits came through
    capsys.readouterr()
    assert main([str(folder), str(tmp_path / 'out.mp4'), '--model', str(ckpt), '--quiet']) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith('note:')]
    assert len(notes) == 1 and '16-bit' in notes[0] and 'out.mp4' in notes[0]


def build_10_bit_video(path, frames):
    """H.264 High 10 (yuv420p10le) of 16-bit RGB frames, tagged BT.709 full range, as PyAV writes it."""
    with av.open(str(path), 'w') as out:
        video = out.add_stream('libx264', rate=25)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], 'yuv420p10le'
        video.options = {'qp': '0'}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format='rgb48le').reformat(format='yuv420p10le')
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
    return path


def decoded(path, rgb):
    """Every frame of the video at ``path``, and its stream's pixel format."""
    with av.open(str(path)) as container:
        return ([f.to_ndarray(format=rgb) for f in container.decode(video=0)],
                container.streams.video[0].codec_context.format.name)


def test_10_bit_video_reaches_the_network_and_the_output_at_10_bits(tmp_path, capsys):
    rng = np.random.default_rng(0)
    frames = [(f.astype(np.uint16) * 257 + rng.integers(0, 256, f.shape)).astype(np.uint16) for f in photo_frames()]
    source = build_10_bit_video(tmp_path / 'deep.mp4', frames)
    given, pixels = decoded(source, 'rgb48le')  # what FFmpeg decodes, independently of vsrkit
    assert pixels == 'yuv420p10le'
    ckpt = tmp_path / 'elsr.pth'
    torch.save({'params': sharpening_elsr(2).state_dict()}, ckpt)

    assert main([str(source), str(tmp_path / 'out'), '--model', str(ckpt), '--quiet']) == 0
    written = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[..., ::-1] for p in sorted((tmp_path / 'out').glob('*.png'))]
    assert len(written) == 2 and written[0].dtype == np.uint16 and written[0].shape == (64, 80, 3)
    for image, got in zip(given, written):
        expected = np.clip(np.round(sharpening_reference(image / 65535.0) * 65535), 0, 65535)
        assert np.abs(got.astype(np.int64) - expected).max() <= 2
        inside = (expected > 0) & (expected < 65535)
        assert (got[inside] % 257 != 0).mean() > 0.9  # not 8-bit values stretched: the low bits came through
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith('note:')]

    assert main([str(source), str(tmp_path / 'out.mkv'), '--model', str(ckpt), '--crf', '0', '--quiet']) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith('note:')]
    lumas, pixels = decoded(tmp_path / 'out.mkv', 'gray10le')  # the Y plane as stored
    assert pixels == 'yuv420p10le' and len(lumas) == 2
    for folder_frame, luma in zip(written, lumas):  # the folder's frame, to Y by the same swscale matrix
        expected = av.VideoFrame.from_ndarray(folder_frame, format='rgb48le').to_ndarray(format='gray10le')
        error = luma.astype(np.float64) - expected  # x264's crf 0 is near-lossless, not lossless, at 10 bits
        assert 20 * np.log10(1023 / np.sqrt(np.mean(error ** 2))) > 50
        assert (luma % 4 != 0).mean() > 0.5  # 10-bit samples, not 8-bit ones shifted up
