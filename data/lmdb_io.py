"""Reading and writing BasicSR-format image lmdbs.

Layout (the one BasicSR's ``LmdbBackend`` and ``make_lmdb_from_imgs`` use)::

    name.lmdb/
    ├── data.mdb         values: PNG bytes (cv2.imencode), keys: relative path without extension, ASCII
    ├── lock.mdb
    └── meta_info.txt    one line per key, in write order: ``000/00000000.png (720,1280,3) 1``
                         (key + '.png', (h,w,c), PNG compression level)

Why this module exists instead of basicsr's helpers:

* py-lmdb >= 2 refuses to open one environment twice in a process, and an environment inherited through
  ``fork`` must not be used by the child. :func:`lmdb_env` opens each lmdb lazily, once per
  (process id, resolved path); in a forked DataLoader worker it drops the inherited handle and reopens.
* ``make_lmdb_from_imgs`` holds every image in memory, sizes the map from the first image (MDB_MAP_FULL on
  mixed sizes) and ``sys.exit``s when the target exists. :func:`write_lmdb` streams in bounded batches,
  doubles the map when it is full, refuses to touch an existing lmdb unless ``overwrite=True``, and is
  resumable: it builds ``<name>.lmdb.incomplete/`` (keys already committed there are skipped on a rerun),
  writes ``meta_info.txt`` last and renames the folder to ``<name>.lmdb`` only when complete — an lmdb at the
  final path is always whole.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Union

import cv2
import lmdb
import numpy as np

from vsrkit.data.image_decode import IMG_EXTENSIONS, decode_image, parallel_map, png_header

__all__ = ['MetaInfo', 'META_INFO_NAME', 'IMG_EXTENSIONS', 'lmdb_env', 'close_lmdb_envs', 'read_meta_info',
           'format_meta_line', 'LmdbImageReader', 'decode_image', 'encode_png', 'write_lmdb',
           'make_lmdb_from_folder', 'scan_images', 'verify_lmdb', 'incomplete_path']

META_INFO_NAME = 'meta_info.txt'
PathLike = Union[str, os.PathLike]
ImageSource = Union[np.ndarray, PathLike]

_META_RE = re.compile(r'^(?P<name>\S+)\s+\((?P<h>\d+),\s*(?P<w>\d+),\s*(?P<c>\d+)\)\s+(?P<level>\d+)$')


class MetaInfo(NamedTuple):
    """One line of an lmdb's ``meta_info.txt``."""
    key: str
    shape: tuple[int, int, int]  # (h, w, c)
    compress_level: int


# ---------------------------------------------------------------------------------------------- reading
# (pid, resolved path) -> environment. The pid is part of the key because a forked child inherits this dict
# together with handles it must not use.
_ENVS: dict[tuple[int, str], lmdb.Environment] = {}


def _resolve(path: PathLike) -> str:
    return str(Path(path).expanduser().resolve())


def lmdb_env(path: PathLike) -> lmdb.Environment:
    """The read-only environment of the lmdb folder ``path``, opened on first use in this process.

    Safe in forked or spawned DataLoader workers and with several datasets/readers on one lmdb: every
    caller in a process shares one handle. Handles inherited from a parent process are closed (in the child
    only) before reopening, because py-lmdb >= 2 would otherwise refuse the open and LMDB forbids using an
    environment across ``fork``.
    """
    resolved = _resolve(path)
    pid = os.getpid()
    env = _ENVS.get((pid, resolved))
    if env is not None:
        return env
    for stale_pid, stale_path in [k for k in _ENVS if k[0] != pid and k[1] == resolved]:
        _ENVS.pop((stale_pid, stale_path)).close()
    if not (Path(resolved) / 'data.mdb').is_file():
        raise FileNotFoundError(f'No lmdb at {path}: {Path(resolved) / "data.mdb"} does not exist.')
    try:
        # readahead on (BasicSR turns it off): a frame is one contiguous run of overflow pages, and from a cold page
        # cache page-by-page faults cost ~13 ms more per 720x1280 frame (measured; no difference once cached)
        env = lmdb.open(resolved, readonly=True, lock=False, readahead=True, meminit=False)
    except lmdb.Error as err:
        raise RuntimeError(f'Cannot open lmdb {resolved}: {err} (py-lmdb >= 2 allows one open per process: '
                           'read it through vsrkit.data.lmdb_io.lmdb_env, or close the other handle first).') from err
    _ENVS[(pid, resolved)] = env
    return env


def close_lmdb_envs() -> None:
    """Close every environment :func:`lmdb_env` opened in this process (e.g. before another library opens one)."""
    pid = os.getpid()
    for key in [k for k in _ENVS if k[0] == pid]:
        _ENVS.pop(key).close()


def _forget_env(path: PathLike) -> None:
    env = _ENVS.pop((os.getpid(), _resolve(path)), None)
    if env is not None:
        env.close()


def _meta_file(path: PathLike) -> Path:
    path = Path(path)
    return path / META_INFO_NAME if path.is_dir() else path


def read_meta_info(path: PathLike) -> list[MetaInfo]:
    """Parse an lmdb's ``meta_info.txt`` (``path``: the lmdb folder or the text file itself).

    Lines look like ``000/00000000.png (720,1280,3) 1``; the key is the name without its extension.
    Raises FileNotFoundError / ValueError naming the file and the line at fault.
    """
    file = _meta_file(path)
    if not file.is_file():
        raise FileNotFoundError(f'meta_info file {file} does not exist (an lmdb written by vsrkit or BasicSR has '
                                f'one; an lmdb without it is incomplete).')
    entries = []
    with open(file, encoding='ascii', errors='replace') as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            match = _META_RE.match(line)
            if match is None:
                raise ValueError(f'{file}, line {number}: expected "<key>.<ext> (<h>,<w>,<c>) <compress_level>" '
                                 f'like "000/00000000.png (720,1280,3) 1", got {line!r}.')
            name = match['name']
            key = name.rsplit('.', 1)[0] if '.' in Path(name).name else name
            entries.append(MetaInfo(key, (int(match['h']), int(match['w']), int(match['c'])), int(match['level'])))
    return entries


def format_meta_line(info: MetaInfo) -> str:
    h, w, c = info.shape
    return f'{info.key}.png ({h},{w},{c}) {info.compress_level}'


class LmdbImageReader:
    """Reads images from one lmdb. Picklable: holds only the path and opens the environment lazily
    (through :func:`lmdb_env`) in whichever process it is used."""

    def __init__(self, path: PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({str(self.path)!r})'

    def __getstate__(self) -> dict:
        return {'path': self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state['path']

    @property
    def env(self) -> lmdb.Environment:
        return lmdb_env(self.path)

    def __len__(self) -> int:
        return self.env.stat()['entries']

    def __contains__(self, key: str) -> bool:
        with self.env.begin(buffers=True) as txn:
            return txn.get(key.encode('ascii')) is not None

    def keys(self) -> Iterator[str]:
        """All keys stored, in lmdb (byte) order."""
        with self.env.begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                yield key.decode('ascii')

    def _missing(self, key: str) -> KeyError:
        return KeyError(f'Key {key!r} is not in the lmdb {self.path}.')

    def get_bytes(self, key: str) -> bytes:
        """The stored (PNG) bytes of ``key``; KeyError naming the key and the lmdb when absent."""
        with self.env.begin() as txn:
            value = txn.get(key.encode('ascii'))
        if value is None:
            raise self._missing(key)
        return value

    def get_image(self, key: str, flag: str = 'color') -> np.ndarray:
        """``key`` decoded like ``cv2.imdecode`` / basicsr's ``imfrombytes`` (uint8 HWC BGR for 'color')."""
        return self.get_images([key], flag)[0]

    def get_images(self, keys: Iterable[str], flag: str = 'color', threads: int | None = None,
                   rows: int | None = None) -> list[np.ndarray]:
        """Several images decoded inside one read transaction, without copying the stored bytes, on
        ``threads`` threads (default: :func:`vsrkit.data.image_decode.decode_threads`); ``rows``: only the top
        rows are needed (see :func:`vsrkit.data.image_decode.decode_image`)."""
        with self.env.begin(buffers=True) as txn:
            values = []
            for key in keys:
                value = txn.get(key.encode('ascii'))
                if value is None:
                    raise self._missing(key)
                values.append((key, value))
            # the buffers point into the memory map and stay valid while the transaction is open
            return parallel_map(lambda kv: decode_image(kv[1], flag, source=f'{kv[0]!r} in the lmdb {self.path}',
                                                        rows=rows),
                                values, threads)


# ---------------------------------------------------------------------------------------------- writing
def encode_png(img: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of ``img`` exactly as BasicSR's lmdb makers store them."""
    ok, buffer = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise ValueError(f'cv2.imencode could not encode an image of shape {img.shape} and dtype {img.dtype} as PNG.')
    return buffer.tobytes()


def _shape3(img: np.ndarray) -> tuple[int, int, int]:
    return (img.shape[0], img.shape[1], 1) if img.ndim == 2 else (img.shape[0], img.shape[1], img.shape[2])


def _check_key(key: str) -> bytes:
    try:
        raw = key.encode('ascii')
    except UnicodeEncodeError:
        raise ValueError(f'lmdb key {key!r} is not ASCII (BasicSR encodes keys as ASCII).') from None
    if not raw or any(ch.isspace() for ch in key) or len(raw) > 511:
        raise ValueError(f'lmdb key {key!r} must be 1-511 ASCII characters without whitespace '
                         f'(meta_info.txt is whitespace-separated).')
    return raw


def _load(source: ImageSource, key: str) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source
    img = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(f'Cannot read the image {source} (for lmdb key {key!r}).')
    return img


def incomplete_path(output_path: PathLike) -> Path:
    """Where :func:`write_lmdb` builds ``output_path`` until it is complete."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + '.incomplete')


def write_lmdb(items: Iterable[tuple[str, ImageSource]], output_path: PathLike, *, overwrite: bool = False,
               compress_level: int = 1, map_size: int = 1 << 30, batch_bytes: int = 64 << 20,
               progress: Callable[[int], None] | None = None) -> Path:
    """Write ``(key, image or image path)`` pairs into a BasicSR-format lmdb at ``output_path`` (``*.lmdb``).

    Args:
        items: keys (ASCII, no whitespace; BasicSR style ``000/00000000``) with a uint8/uint16 HWC BGR array or
            the path of an image file. Consumed lazily; a path is read only when its key still has to be written.
        output_path: the lmdb folder to create; must end with ``.lmdb``.
        overwrite: replace an existing lmdb at ``output_path`` (the old one stays readable until the new one is
            complete). Without it an existing lmdb is never touched (FileExistsError).
        compress_level: PNG compression level (0-9), recorded in meta_info.txt.
        map_size: initial map size in bytes; doubled whenever LMDB reports MDB_MAP_FULL.
        batch_bytes: commit once this many encoded bytes are pending; bounds memory independently of the
            dataset size.
        progress: called with 1 for every item handled (written or skipped), e.g. ``tqdm.update``.

    Returns the path of the finished lmdb. A run that is interrupted leaves ``<name>.lmdb.incomplete``; calling
    again with the same items resumes it, writing only the keys not yet committed. Raises ValueError when the
    items repeat a key or the folder holds keys that the items do not list.
    """
    output_path = Path(output_path)
    if output_path.suffix != '.lmdb':
        raise ValueError(f"lmdb output path must end with '.lmdb', got {output_path}.")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f'{output_path} already exists; pass overwrite=True (CLI: --overwrite) to replace it.')
    work = incomplete_path(output_path)
    work.mkdir(parents=True, exist_ok=True)
    partial_meta = work / (META_INFO_NAME + '.partial')

    env = lmdb.open(str(work), map_size=map_size)
    try:
        count = _stream_into(env, items, partial_meta, compress_level, batch_bytes, progress, work)
        entries = env.stat()['entries']
        env.sync(True)
    finally:
        env.close()
    if entries != count:
        raise ValueError(f'{work} holds {entries} keys but the items list {count}: the items repeat a key or '
                         f'an earlier interrupted run wrote other keys. Delete {work} and rerun.')
    os.replace(partial_meta, work / META_INFO_NAME)  # the completion marker inside the folder
    _forget_env(output_path)
    if output_path.exists():  # overwrite=True: swap, so a reader never sees a half-written lmdb at output_path
        trash = output_path.with_name(f'{output_path.name}.replaced-{os.getpid()}')
        os.replace(output_path, trash)
        os.replace(work, output_path)
        shutil.rmtree(trash)
    else:
        os.replace(work, output_path)
    return output_path


def _stream_into(env: lmdb.Environment, items: Iterable[tuple[str, ImageSource]], meta_path: Path,
                 compress_level: int, batch_bytes: int, progress: Callable[[int], None] | None, where: Path) -> int:
    """Write ``items`` into ``env``, skipping committed keys; meta lines go to ``meta_path`` in item order."""
    pending: list[tuple[bytes, bytes]] = []
    pending_bytes = 0
    count = 0

    def commit() -> None:
        while True:
            try:
                with env.begin(write=True) as txn:
                    for key, value in pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:  # the aborted batch is retried whole in a larger map
                env.set_mapsize(env.info()['map_size'] * 2)
        pending.clear()

    with open(meta_path, 'w', encoding='ascii') as meta:
        for key, source in items:
            raw = _check_key(key)
            with env.begin(buffers=True) as txn:
                # a resumed run learns a committed key's shape from its PNG header, without decoding it
                stored = txn.get(raw)
                header = None if stored is None else png_header(stored)
                shape = None if header is None else (header.height, header.width, header.channels)
            if shape is None:
                img = _load(source, key)
                value = encode_png(img, compress_level)
                shape = _shape3(img)
                pending.append((raw, value))
                pending_bytes += len(value)
            meta.write(format_meta_line(MetaInfo(key, shape, compress_level)) + '\n')
            count += 1
            if progress is not None:
                progress(1)
            if pending_bytes >= batch_bytes:
                commit()
                pending_bytes = 0
        commit()
    return count


def scan_images(input_dir: PathLike, extensions: Iterable[str] = IMG_EXTENSIONS) -> list[tuple[str, Path]]:
    """``(key, path)`` for every image under ``input_dir``: key = relative POSIX path without extension, sorted."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f'Input folder {input_dir} does not exist.')
    extensions = {e.lower() for e in extensions}
    items = sorted((p.relative_to(input_dir).with_suffix('').as_posix(), p)
                   for p in input_dir.rglob('*') if p.suffix.lower() in extensions and p.is_file())
    if not items:
        raise FileNotFoundError(f'No images ({", ".join(sorted(extensions))}) under {input_dir}.')
    return items


def make_lmdb_from_folder(input_dir: PathLike, output_path: PathLike, *, overwrite: bool = False,
                          compress_level: int = 1, map_size: int = 1 << 30,
                          extensions: Iterable[str] = IMG_EXTENSIONS,
                          progress: Callable[[int], None] | None = None) -> Path:
    """Store every image under ``input_dir`` in a BasicSR-format lmdb, keyed by its relative path without
    extension (``000/00000000.png`` -> ``000/00000000``). See :func:`write_lmdb` for the other arguments."""
    return write_lmdb(scan_images(input_dir, extensions), output_path, overwrite=overwrite,
                      compress_level=compress_level, map_size=map_size, progress=progress)


def verify_lmdb(path: PathLike, progress: Callable[[int], None] | None = None) -> int:
    """Decode every key listed in ``meta_info.txt`` and compare its shape; check nothing else is stored.

    Returns the number of keys checked; raises ValueError listing (up to 20 of) the problems found.
    """
    reader = LmdbImageReader(path)
    entries = read_meta_info(path)
    problems = []
    with reader.env.begin(buffers=True) as txn:
        for info in entries:
            value = txn.get(info.key.encode('ascii'))
            if value is None:
                problems.append(f'{info.key!r}: listed in meta_info.txt but not stored')
            else:
                img = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
                if img is None:
                    problems.append(f'{info.key!r}: value does not decode as an image')
                elif _shape3(img) != info.shape:
                    problems.append(f'{info.key!r}: decodes to {_shape3(img)}, meta_info.txt says {info.shape}')
            if progress is not None:
                progress(1)
    stored = len(reader)
    if stored != len(entries):
        problems.append(f'{stored} keys stored but meta_info.txt lists {len(entries)}')
    if problems:
        raise ValueError(f'lmdb {path} failed verification ({len(problems)} problems):\n  '
                         + '\n  '.join(problems[:20]))
    return len(entries)
