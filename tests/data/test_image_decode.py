"""vsrkit.data.image_decode: libspng fast path equals OpenCV, fallbacks keep cv2's conventions, threads."""
import os
import time

import cv2
import numpy as np
import pytest
import skimage.data
import torch.utils.data

from vsrkit.data.image_decode import (PNG_HEADER_BYTES, PngHeader, _is_rgb8_png, decode_image, decode_threads, parallel_map,
                                      png_header)


def png(img: np.ndarray, level: int = 1) -> bytes:
    ok, buffer = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, level])
    assert ok
    return buffer.tobytes()


@pytest.fixture(scope='module')
def photo_bgr() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut()[..., ::-1])


@pytest.mark.parametrize('level', [0, 1, 9])
def test_rgb8_png_takes_the_fast_path_and_equals_opencv(photo_bgr, level):
    data = png(photo_bgr, level)
    assert _is_rgb8_png(png_header(data)) and _is_rgb8_png(png_header(memoryview(data)))
    out = decode_image(data)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    np.testing.assert_array_equal(out, photo_bgr)


@pytest.mark.parametrize('kind', ['grey', 'bgra', 'uint16', 'jpeg'])
def test_other_formats_follow_opencv_imread_color(photo_bgr, kind):
    if kind == 'grey':
        data = png(skimage.data.camera())
    elif kind == 'bgra':
        data = png(np.dstack([photo_bgr, np.full(photo_bgr.shape[:2], 128, np.uint8)]))
    elif kind == 'uint16':
        data = png(photo_bgr.astype(np.uint16) * 257)
    else:
        data = cv2.imencode('.jpg', photo_bgr)[1].tobytes()
    assert not _is_rgb8_png(png_header(data))
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decode_image(data), expected)
    assert decode_image(data).shape == ((512, 512, 3) if kind == 'grey' else photo_bgr.shape)


def test_grayscale_and_unchanged_flags(photo_bgr):
    data = png(photo_bgr)
    np.testing.assert_array_equal(decode_image(data, 'grayscale'),
                                  cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE))
    np.testing.assert_array_equal(decode_image(data, 'unchanged'), photo_bgr)
    with pytest.raises(ValueError, match="flag must be one of"):
        decode_image(data, 'colour')


@pytest.mark.parametrize('kind, header', [
    ('rgb', PngHeader(512, 512, 8, 2, 0)), ('grey', PngHeader(512, 512, 8, 0, 0)),
    ('bgra', PngHeader(512, 512, 8, 6, 0)), ('uint16', PngHeader(512, 512, 16, 2, 0)),
    ('crop', PngHeader(100, 37, 8, 2, 0))])
def test_png_header_against_what_opencv_decodes(photo_bgr, kind, header):
    """The one PNG header parser: sizes, bit depth and colour type from the first bytes, channels as OpenCV's
    IMREAD_UNCHANGED decodes them (what the lmdb writer records)."""
    img = {'rgb': photo_bgr, 'grey': skimage.data.camera(), 'crop': photo_bgr[:100, :37],
           'bgra': np.dstack([photo_bgr, np.full(photo_bgr.shape[:2], 128, np.uint8)]),
           'uint16': photo_bgr.astype(np.uint16) * 257}[kind]
    data = png(img)
    assert png_header(data[:PNG_HEADER_BYTES]) == header == png_header(memoryview(data))
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (header.height, header.width, header.channels) == (*decoded.shape[:2], 1 if decoded.ndim == 2 else
                                                               decoded.shape[2])
    assert _is_rgb8_png(header) == (kind in ('rgb', 'crop'))
    jpeg = cv2.imencode('.jpg', photo_bgr)[1].tobytes()
    for not_png in (b'GIF89a' + data[6:], data[:PNG_HEADER_BYTES - 1], jpeg):
        assert png_header(not_png) is None


@pytest.mark.parametrize('rows', [1, 100, 511, 512, 600])
def test_rows_decodes_the_top_rows_only(photo_bgr, rows):
    data = png(photo_bgr)
    np.testing.assert_array_equal(decode_image(data, rows=rows), photo_bgr[:rows])
    grey = png(cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY))  # not the fast path: decoded whole, then sliced
    np.testing.assert_array_equal(decode_image(grey, rows=rows), decode_image(grey)[:rows])
    with pytest.raises(ValueError, match=r"rows must be a positive number of rows to decode, got 0 \(image 'k'"):
        decode_image(data, rows=0, source="'k'")


def test_rows_takes_time_in_proportion(photo_bgr):
    """The point of ``rows``: a crop near the top skips most of the unfiltering (measured ~0.3 of the full time
    for 1/8 of the rows: the inflate is always whole). Best of 9 against a bound that ignoring ``rows`` (1.0)
    cannot meet even on a busy machine."""
    data = png(np.tile(photo_bgr, (4, 2, 1)))  # 2048 x 1024

    def best(**kw):
        times = []
        for _ in range(9):
            start = time.perf_counter()
            decode_image(data, **kw)
            times.append(time.perf_counter() - start)
        return min(times)
    assert best(rows=256) < 0.7 * best()


@pytest.mark.parametrize('cut', [40, 5000])
def test_truncated_png_names_its_source(photo_bgr, cut):
    data = png(photo_bgr)[:cut]
    with pytest.raises(ValueError, match=r"Cannot decode the image 'clip/0001' in x\.lmdb"):
        decode_image(data, source="'clip/0001' in x.lmdb")


def test_parallel_map_keeps_order_and_raises():
    assert parallel_map(lambda x: x * x, list(range(50)), threads=2) == [x * x for x in range(50)]
    assert parallel_map(str, [1], threads=4) == ['1']

    def fail(x):
        if x == 7:
            raise ValueError('item 7')
        return x

    with pytest.raises(ValueError, match='item 7'):
        parallel_map(fail, list(range(10)), threads=2)


class _ThreadsPerWorker(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        # decoding in a forked worker must work (its own pool), and the cores are divided among the workers
        assert parallel_map(lambda x: x + 1, [1, 2, 3]) == [2, 3, 4]
        return decode_threads()


@pytest.mark.parametrize('workers', [0, 2])
def test_decode_threads_divides_cores_among_workers(workers):
    cores = len(os.sched_getaffinity(0))
    loader = torch.utils.data.DataLoader(_ThreadsPerWorker(), num_workers=workers,
                                         multiprocessing_context='fork' if workers else None)
    got = {int(x) for x in loader}
    assert got == {cores if workers == 0 else max(1, cores // workers)}
