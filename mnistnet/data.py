"""IDX reader, MNIST loader, per-user cache and download.

The four MNIST files are stored in the IDX format: two zero bytes, a dtype code, the number of
dimensions, the dimensions as big-endian uint32, then the data in row-major order, big-endian.
The files are usually gzip-compressed.

:func:`read_idx` reads one such file and refuses anything malformed with a ``ValueError`` that
names the file, checking the header before allocating, so a forged header or a gzip bomb cannot
make it allocate or inflate more than the header honestly describes (and never more than
:data:`MAX_IDX_BYTES`).

:func:`load_mnist` finds the four files (``path=``, else ``$MNISTNET_DATA``, else the per-user
cache :func:`cache_dir`, else it downloads them there with :func:`download_mnist`) and returns
``(x_train, y_train), (x_test, y_test)``. Any dataset in the same four-file layout
(Fashion-MNIST, KMNIST, ...) loads too: local files get structural checks only, while downloads
are verified against the sha256 in :data:`FILES`.

:mod:`mnistnet.datasets` loads the rest of the MNIST family (Fashion-MNIST, KMNIST, EMNIST,
QMNIST) through the same search (:func:`_locate_files`) and the same verified download
(:func:`_download_files`), each with its own files, mirrors and published checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, NamedTuple, TextIO

import numpy as np

__all__ = [
    "DATA_ENV_VAR",
    "FILES",
    "MAX_IDX_BYTES",
    "MIRRORS",
    "Checksum",
    "DownloadError",
    "cache_dir",
    "download_mnist",
    "load_mnist",
    "load_mnist_test",
    "read_idx",
]

PathLike = str | os.PathLike[str]

#: Largest payload (in bytes, after decompression) that :func:`read_idx` accepts.
MAX_IDX_BYTES = 2 * 1024**3
#: Most dimensions an IDX file may declare (MNIST uses 1 for labels and 3 for images).
MAX_IDX_NDIM = 4

#: Environment variable naming a folder that holds the four files.
DATA_ENV_VAR = "MNISTNET_DATA"

#: Mirrors tried in order, HTTPS first (torchvision's, then Google's), the original site last.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: The four files the mirrors serve, each with the sha256 of its ``.gz`` bytes.
FILES: Mapping[str, str] = MappingProxyType(
    {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
        ),
    }
)

_TRAIN_IMAGES = "train-images-idx3-ubyte"
_TRAIN_LABELS = "train-labels-idx1-ubyte"
_TEST_IMAGES = "t10k-images-idx3-ubyte"
_TEST_LABELS = "t10k-labels-idx1-ubyte"
_DATASET_STEMS = (_TRAIN_IMAGES, _TRAIN_LABELS, _TEST_IMAGES, _TEST_LABELS)
_TEST_STEMS = (_TEST_IMAGES, _TEST_LABELS)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (zlib.error, EOFError, gzip.BadGzipFile, OSError)
_READ_CHUNK = 1 << 20
_DOWNLOAD_CHUNK = 1 << 16
_MAX_DOWNLOAD_BYTES = MAX_IDX_BYTES


# --------------------------------------------------------------------------- IDX reader


def read_idx(path: PathLike) -> np.ndarray:
    """Read one IDX file, gzip-compressed or raw, into an array in native byte order.

    Compression is detected from the gzip magic bytes, not from the file name. The array has
    the shape and element type the header declares.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a well-formed IDX file (bad magic, unknown dtype code,
            unreasonable dimensions, more than :data:`MAX_IDX_BYTES` of data, truncated or
            trailing data, corrupt gzip stream). The message names the file and the problem.
    """
    name = os.fspath(path)
    try:
        raw = open(name, "rb")  # closed by the with statement below
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{name}: no such file") from exc
    with raw:
        magic = raw.read(2)
        if not magic:
            raise ValueError(f"{name}: empty file, not an IDX file")
        raw.seek(0)
        if magic == _GZIP_MAGIC:
            return _read_gzip_idx(raw, name)
        return _read_idx_stream(raw, name, size=os.fstat(raw.fileno()).st_size)


def _read_gzip_idx(raw: BinaryIO, name: str) -> np.ndarray:
    """Read an IDX file from a gzip stream, turning every gzip failure into a ValueError."""
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            return _read_idx_stream(stream, name, size=None)
    except _GZIP_ERRORS as exc:
        raise ValueError(f"{name}: corrupt gzip stream ({type(exc).__name__}: {exc})") from exc


def _read_idx_stream(stream: BinaryIO, name: str, size: int | None) -> np.ndarray:
    """Parse the header, then read exactly the payload it describes.

    ``size`` is the total stream size when known (raw files): the payload length is then
    checked before anything is read or allocated.
    """
    dtype, shape = _read_idx_header(stream, name)
    expected = _payload_bytes(dtype, shape, name)
    if size is not None:
        _check_raw_size(size - _header_bytes(shape), expected, name)
    payload = _read_exactly(stream, expected, name)
    return _to_native_array(payload, dtype, shape)


def _read_idx_header(stream: BinaryIO, name: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Read and validate the magic number and the dimensions."""
    magic = stream.read(4)
    if len(magic) < 4:
        raise ValueError(f"{name}: file too short for an IDX header ({len(magic)} bytes)")
    if magic[0] != 0 or magic[1] != 0:
        raise ValueError(
            f"{name}: not an IDX file (magic starts with {magic[:2].hex()}, expected 0000)"
        )
    code, ndim = magic[2], magic[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX dtype code 0x{code:02X}")
    if not 1 <= ndim <= MAX_IDX_NDIM:
        raise ValueError(f"{name}: IDX header declares {ndim} dimensions (1..{MAX_IDX_NDIM})")
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"{name}: truncated IDX header ({ndim} dimensions declared)")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    return _IDX_DTYPES[code], shape


def _header_bytes(shape: tuple[int, ...]) -> int:
    return 4 + 4 * len(shape)


def _payload_bytes(dtype: np.dtype, shape: tuple[int, ...], name: str) -> int:
    """Bytes of data the header describes, refusing anything above MAX_IDX_BYTES."""
    for axis, dim in enumerate(shape):
        if dim * dtype.itemsize > MAX_IDX_BYTES:
            raise ValueError(
                f"{name}: dimension {axis} of the IDX header is {dim}, "
                f"more than the {MAX_IDX_BYTES}-byte limit allows"
            )
    # An empty array can still have dimensions whose product overflows NumPy's size type.
    nonzero_extent = math.prod(dim for dim in shape if dim) * dtype.itemsize
    if 0 in shape and nonzero_extent > MAX_IDX_BYTES:
        raise ValueError(
            f"{name}: IDX header shape {shape} holds no data, but its other dimensions "
            f"multiply to {nonzero_extent} bytes, more than the {MAX_IDX_BYTES}-byte limit"
        )
    total = math.prod(shape) * dtype.itemsize
    if total > MAX_IDX_BYTES:
        raise ValueError(
            f"{name}: header says {total} bytes of data (shape {shape}), "
            f"more than the {MAX_IDX_BYTES}-byte limit"
        )
    return total


def _check_raw_size(available: int, expected: int, name: str) -> None:
    if available < expected:
        raise ValueError(
            f"{name}: header says {expected} bytes of data but the file has {available}"
        )
    if available > expected:
        raise ValueError(
            f"{name}: header says {expected} bytes of data but the file has "
            f"{available - expected} trailing bytes after them"
        )


def _read_exactly(stream: BinaryIO, expected: int, name: str) -> np.ndarray:
    """Read ``expected`` bytes in chunks, then make sure nothing follows; the bytes come
    back as a NumPy uint8 array.

    Never reads more than one byte past ``expected``, so a gzip bomb is not inflated, and
    never allocates more than it has read (a header may lie). NumPy allocates the array, with
    huge pages where Linux gives them on request: the epoch reads the training images' rows
    at random, and a bytearray's small pages made MNIST's uint8 epoch 5-10% slower in TLB
    misses.
    """
    chunks, done = [], 0
    while done < expected:
        chunk = stream.read(min(_READ_CHUNK, expected - done))
        if not chunk:
            raise ValueError(
                f"{name}: header says {expected} bytes of data but the file has {done}"
            )
        chunks.append(chunk)
        done += len(chunk)
    payload = np.empty(expected, dtype=np.uint8)
    at = 0
    for chunk in chunks:
        payload[at: at + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        at += len(chunk)
    del chunks
    if stream.read(1):
        raise ValueError(
            f"{name}: header says {expected} bytes of data but the file has trailing bytes "
            f"after them"
        )
    return payload


def _to_native_array(payload: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """View the payload as the header's dtype and shape, byte-swapped in place if needed."""
    array = payload.view(dtype)
    if not dtype.isnative:
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array.reshape(shape)


# --------------------------------------------------------------------------- loader


def cache_dir() -> Path:
    """The per-user cache folder: ``$XDG_CACHE_HOME/mnistnet``, else ``~/.cache/mnistnet``.

    A relative ``$XDG_CACHE_HOME`` is ignored, as the XDG specification asks. The folder is not
    created here.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "mnistnet"
    return Path.home() / ".cache" / "mnistnet"


def load_mnist(
    path: PathLike | None = None, *, normalize: bool = True, download: bool = True
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load MNIST (or any dataset in the same four-file IDX layout).

    The four files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each raw or ``.gz``; the raw one
    is used when both exist) are looked for in:

    1. ``path`` if given, and then only there;
    2. else the folder named by ``$MNISTNET_DATA``;
    3. else :func:`cache_dir`;
    4. else, if ``download`` is true, they are downloaded into :func:`cache_dir`.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: x of shape ``(n, rows * cols)``, C-contiguous,
        float32 in [0, 1] (pixels divided by 255) when ``normalize`` is true, else uint8; y
        uint8 of shape ``(n,)``.

    Raises:
        FileNotFoundError: files missing from ``path``, or found nowhere and ``download`` false.
        ValueError: a file is malformed, or the four files do not fit together.
        DownloadError: every mirror failed for some file.
    """
    files = _locate_dataset(path, download)
    train_images = read_idx(files[_TRAIN_IMAGES])
    train_labels = read_idx(files[_TRAIN_LABELS])
    test_images = read_idx(files[_TEST_IMAGES])
    test_labels = read_idx(files[_TEST_LABELS])
    _check_split(train_images, train_labels, files[_TRAIN_IMAGES], files[_TRAIN_LABELS])
    _check_split(test_images, test_labels, files[_TEST_IMAGES], files[_TEST_LABELS])
    _check_same_image_size(
        train_images.shape[1:], test_images.shape[1:], files[_TRAIN_IMAGES], files[_TEST_IMAGES]
    )
    x_train = _flatten_images(train_images, normalize)
    del train_images  # let the raw bytes go before the test split is converted
    x_test = _flatten_images(test_images, normalize)
    return (x_train, train_labels), (x_test, test_labels)


def load_mnist_test(
    path: PathLike | None = None, *, normalize: bool = True, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The test split only, ``(x_test, y_test)``, as :func:`load_mnist` returns it: a folder
    needs only ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (raw or ``.gz``).
    Looked for in the same places as :func:`load_mnist`; a download fetches all four."""
    files = _locate_dataset(path, download, _TEST_STEMS)
    images, labels = read_idx(files[_TEST_IMAGES]), read_idx(files[_TEST_LABELS])
    _check_split(images, labels, files[_TEST_IMAGES], files[_TEST_LABELS])
    return _flatten_images(images, normalize), labels


class _Search(NamedTuple):
    """Where one dataset's files are looked for, after an explicit ``path``, and what to say
    when they are not there."""

    title: str  # names the dataset in messages: "MNIST", "Fashion-MNIST"
    stems: Sequence[str]  # the files, each raw or .gz
    env_folders: Sequence[tuple[str, str]]  # (label, folder): "$MNISTNET_DATA", its value
    cache: Path
    hint: str  # how to install the files by hand
    folder_hint: str = ""  # ends the error for a path= folder that lacks files


# _locate_files warns on behalf of the public loader two calls up (load_mnist, datasets.load).
_WARN_STACKLEVEL = 4


def _locate_dataset(
    path: PathLike | None, download: bool, stems: Sequence[str] = _DATASET_STEMS
) -> dict[str, Path]:
    """Find the files of `stems`, following the search order documented in
    :func:`load_mnist`."""
    env_folder = os.environ.get(DATA_ENV_VAR)
    search = _Search(
        title="MNIST",
        stems=stems,
        env_folders=[(f"${DATA_ENV_VAR}", env_folder)] if env_folder else [],
        cache=cache_dir(),
        hint=_manual_install_hint(),
    )

    def fetch() -> Path:
        return download_mnist(cache_dir(), mirrors=MIRRORS, files=FILES)

    return _locate_files(search, path, fetch if download else None)


def _locate_files(
    search: _Search, path: PathLike | None, fetch: Callable[[], Path] | None
) -> dict[str, Path]:
    """Map each stem to its file: in ``path`` only, if given; else in the first of the
    environment's folders that holds them all (warning about each one that lacks some), else
    in the cache; else in the folder ``fetch`` downloads them to (None: no download)."""
    if path is not None:
        return _dataset_files_or_raise(Path(path), search.stems, search.title, search.folder_hint)
    places = [folder for _, folder in search.env_folders] + [str(search.cache)]
    for index, (label, folder) in enumerate(search.env_folders):
        files, missing = _dataset_files(Path(folder), search.stems)
        if not missing:
            return files
        warnings.warn(
            f"{label}={folder} lacks {', '.join(missing)}; looking in {places[index + 1]} instead",
            stacklevel=_WARN_STACKLEVEL,
        )
    files, missing = _dataset_files(search.cache, search.stems)
    if not missing:
        return files
    if fetch is None:
        searched = "".join(f"{folder} ({label}) and " for label, folder in search.env_folders)
        raise FileNotFoundError(
            f"{search.title} files not found in {searched}{search.cache}, and download=False. "
            + search.hint
        )
    return _dataset_files_or_raise(fetch(), search.stems, search.title)


def _dataset_files(
    folder: Path, stems: Sequence[str] = _DATASET_STEMS
) -> tuple[dict[str, Path], list[str]]:
    """Map each stem to its file in ``folder``; also list the stems not found."""
    found, missing = {}, []
    for stem in stems:
        candidates = (folder / stem, folder / f"{stem}.gz")
        existing = [candidate for candidate in candidates if candidate.is_file()]
        if existing:
            found[stem] = existing[0]
        else:
            missing.append(stem)
    return found, missing


def _dataset_files_or_raise(
    folder: Path, stems: Sequence[str] = _DATASET_STEMS, title: str = "MNIST", hint: str = ""
) -> dict[str, Path]:
    what = f"the four {title} files" if len(stems) == 4 else f"the {title} test files"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected {what} there)")
    files, missing = _dataset_files(folder, stems)
    if missing:
        raise FileNotFoundError(
            f"{folder}: missing "
            + ", ".join(f"{stem}[.gz]" for stem in missing)
            + f" (expected {'the four' if len(stems) == 4 else 'the'} files "
            + f"{', '.join(stems)}, raw or .gz)"
            + (f". {hint}" if hint else "")
        )
    return files


def _check_split(
    images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path
) -> None:
    """Images must be (n, rows, cols) uint8 and labels (n,) uint8 with the same n."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{images_path}: expected 3-D uint8 images, got {images.ndim}-D {images.dtype}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"{labels_path}: expected 1-D uint8 labels, got {labels.ndim}-D {labels.dtype}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    if images.size == 0:
        raise ValueError(f"{images_path}: no image data (shape {images.shape})")


def _check_same_image_size(
    train_size: tuple[int, ...], test_size: tuple[int, ...], train_path: Path, test_path: Path
) -> None:
    """Train and test images must have the same (rows, cols)."""
    if train_size != test_size:
        raise ValueError(
            f"image sizes differ: {train_path} has {train_size[0]}x{train_size[1]} images, "
            f"{test_path} has {test_size[0]}x{test_size[1]}"
        )


def _flatten_images(images: np.ndarray, normalize: bool) -> np.ndarray:
    """(n, rows, cols) uint8 -> (n, rows * cols), float32 / 255 in one pass if ``normalize``."""
    flat = images.reshape(images.shape[0], -1)
    if not normalize:
        return np.ascontiguousarray(flat)
    scaled = np.empty(flat.shape, dtype=np.float32)
    np.divide(flat, np.float32(255), out=scaled, dtype=np.float32)
    return scaled


# --------------------------------------------------------------------------- download


class DownloadError(RuntimeError):
    """Every mirror failed for a file; the message lists why and where to put files by hand."""


class _MirrorFailure(Exception):
    """One mirror could not deliver one verified file; the message is the reason."""


class Checksum(NamedTuple):
    """A published checksum of a file's bytes: a :mod:`hashlib` algorithm name ("sha256",
    "md5") and the lowercase hex digest."""

    algorithm: str
    hexdigest: str


def download_mnist(
    dest: PathLike | None = None,
    *,
    mirrors: Iterable[str] = MIRRORS,
    files: Mapping[str, str] = FILES,
    timeout: float = 30,
    progress: bool | None = None,
) -> Path:
    """Download the files into ``dest`` (default :func:`cache_dir`) and return ``dest``.

    ``files`` maps each file name to the sha256 of its bytes. Files already in ``dest`` with
    the right checksum are kept. Otherwise the mirrors are tried in order: each download
    streams into a temporary file in ``dest`` while being hashed, and only a verified file is
    moved into place (atomically, with :func:`os.replace`); a network error, an HTTP error or a
    checksum mismatch deletes the temporary file and moves on to the next mirror. ``timeout``
    (seconds) applies to connecting and to every read. ``progress`` shows a progress bar on
    stderr; ``None`` shows it when stderr is a terminal.

    Raises:
        DownloadError: every mirror failed for some file. The message lists each mirror with
            its reason and where to put the files by hand. Files verified before that stay.
    """
    folder = Path(dest) if dest is not None else cache_dir()
    checksums = {name: Checksum("sha256", sha256) for name, sha256 in files.items()}
    _download_files(folder, mirrors, checksums, timeout, progress, _manual_install_hint())
    return folder


def _download_files(
    folder: Path,
    mirrors: Iterable[str],
    files: Mapping[str, Checksum],
    timeout: float,
    progress: bool | None,
    hint: str,
) -> None:
    """Download each of ``files`` into ``folder`` as :func:`download_mnist` documents, keeping
    those already there with the right checksum; ``hint`` ends the :class:`DownloadError`."""
    folder.mkdir(parents=True, exist_ok=True)
    show_progress = _stderr_is_terminal() if progress is None else progress
    mirror_list = list(mirrors)
    for name, checksum in files.items():
        target = folder / name
        if target.is_file() and _digest_of_file(target, checksum.algorithm) == checksum.hexdigest:
            continue
        _download_verified(name, checksum, target, mirror_list, timeout, show_progress, hint)


def _stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


def _download_verified(
    name: str,
    checksum: Checksum,
    target: Path,
    mirrors: list[str],
    timeout: float,
    progress: bool,
    hint: str,
) -> None:
    """Try each mirror in turn until one delivers ``name`` with the expected checksum."""
    failures = []
    for mirror in mirrors:
        url = _file_url(mirror, name)
        try:
            _fetch_into(url, target, checksum, timeout, progress)
            return
        except _MirrorFailure as failure:
            failures.append(f"  {url}: {failure}")
    tried = "\n".join(failures) if failures else "  (no mirrors given)"
    raise DownloadError(f"could not download {name} from any mirror:\n{tried}\n{hint}")


def _file_url(mirror: str, name: str) -> str:
    return mirror.rstrip("/") + "/" + name


def _fetch_into(url: str, target: Path, checksum: Checksum, timeout: float, progress: bool) -> None:
    """Stream ``url`` to a temporary file beside ``target``, verify it, then move it in place.

    The temporary file is deleted on any failure, interruptions included.
    """
    handle = tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False
    )
    temp_path = Path(handle.name)
    try:
        with handle:
            bar = _ProgressBar(target.name, progress)
            digest = _stream_url(url, handle, timeout, bar, checksum.algorithm)
        if digest != checksum.hexdigest:
            raise _MirrorFailure(
                f"{checksum.algorithm} mismatch (got {digest}, expected {checksum.hexdigest})"
            )
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, target)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def _stream_url(url: str, out: BinaryIO, timeout: float, bar: _ProgressBar, algorithm: str) -> str:
    """Copy the body of ``url`` into ``out``; return its hex digest by ``algorithm``."""
    digest = _new_hash(algorithm)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = _content_length(response)
            if total is not None and total > _MAX_DOWNLOAD_BYTES:
                raise _MirrorFailure(f"announces {total} bytes, more than {_MAX_DOWNLOAD_BYTES}")
            done = 0
            while chunk := response.read(_DOWNLOAD_CHUNK):
                done += len(chunk)
                if done > _MAX_DOWNLOAD_BYTES:
                    raise _MirrorFailure(f"more than {_MAX_DOWNLOAD_BYTES} bytes, gave up")
                digest.update(chunk)
                out.write(chunk)
                bar.update(done, total)
            if total is not None and done != total:
                raise _MirrorFailure(f"connection closed after {done} of {total} bytes")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _MirrorFailure(_describe_network_error(exc)) from exc
    finally:
        bar.close()
    return digest.hexdigest()


def _content_length(response: http.client.HTTPResponse) -> int | None:
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _describe_network_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if reason is not None:
        return f"{type(exc).__name__}: {reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _ProgressBar:
    """An in-place ``\\r`` progress bar: bytes done / total, drawn only when it changes."""

    WIDTH = 40

    def __init__(self, name: str, enabled: bool, stream: TextIO | None = None) -> None:
        self.name = name
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.last_step = -1

    def update(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        step = done * self.WIDTH // total if total else done >> 20
        if step == self.last_step:
            return
        self.last_step = step
        self.stream.write("\r" + self._line(done, total))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.last_step >= 0:
            self.stream.write("\n")
            self.stream.flush()

    def _line(self, done: int, total: int | None) -> str:
        if not total:
            return f"{self.name}: {_format_size(done)}"
        filled = min(self.WIDTH, done * self.WIDTH // total)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        return f"{self.name}: [{bar}] {_format_size(done)} / {_format_size(total)}"


def _format_size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _new_hash(algorithm: str):  # -> a hashlib hash object
    # usedforsecurity=False: md5 is all some publishers list, and a FIPS-mode Python refuses it
    # otherwise. It still catches corruption, and no practical attack forges a file to match a
    # given md5 (a second preimage).
    return hashlib.new(algorithm, usedforsecurity=False)


def _digest_of_file(path: Path, algorithm: str) -> str:
    digest = _new_hash(algorithm)
    with open(path, "rb") as stream:
        while chunk := stream.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _manual_install_hint() -> str:
    names = ", ".join(FILES)
    return (
        f"To install the files by hand, put {names} (raw or .gz) in {cache_dir()}, "
        f"or in any folder and set {DATA_ENV_VAR} to it, or pass load_mnist(path=...)."
    )
