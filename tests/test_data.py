"""Tests for mnistnet.data: the IDX reader and load_mnist's file handling.

Everything runs on tiny IDX files written to tmp_path; the test against the real dataset runs
only when $MNISTNET_DATA names a folder holding the four MNIST files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mnistnet.data import cache_dir, load_mnist, read_idx

DTYPE_CODES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# From shared/data/mnist/README.md: sha256 of each file's decompressed content.
MNIST_CONTENT_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


# --------------------------------------------------------------------------- helpers


def idx_header(code: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """The IDX encoding of ``array`` with the given dtype code (big-endian payload)."""
    payload = np.ascontiguousarray(array, dtype=np.dtype(DTYPE_CODES[code])).tobytes()
    return idx_header(code, array.shape) + payload


def write(path: Path, content: bytes, compress: bool = False) -> Path:
    path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    return path


def write_dataset(
    folder: Path,
    n_train: int = 12,
    n_test: int = 5,
    rows: int = 4,
    cols: int = 3,
    compress: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a tiny dataset in the MNIST four-file layout; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        STEMS[0]: rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        STEMS[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        STEMS[2]: rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        STEMS[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    if n_train and rows * cols >= 2:
        arrays[STEMS[0]].flat[:2] = 0, 255  # hit both ends of [0, 1]
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        name = f"{stem}.gz" if compress else stem
        write(folder / name, idx_bytes(array), compress)
    return arrays


def sample_array(code: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(code)
    dtype = np.dtype(DTYPE_CODES[code])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype.newbyteorder("="))
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------- read_idx: valid


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("code", sorted(DTYPE_CODES), ids=lambda c: f"0x{c:02X}")
def test_read_idx_round_trips_every_dtype_and_ndim(tmp_path, code, shape, compress):
    expected = sample_array(code, shape)
    path = write(tmp_path / "data.idx", idx_bytes(expected, code), compress)

    array = read_idx(path)

    assert array.shape == shape
    assert array.dtype == np.dtype(DTYPE_CODES[code]).newbyteorder("=")
    assert array.dtype.isnative
    np.testing.assert_array_equal(array, expected)


def test_read_idx_detects_gzip_by_magic_not_by_name(tmp_path):
    expected = np.arange(6, dtype=np.uint8).reshape(2, 3)
    gz_named_raw = write(tmp_path / "raw.gz", idx_bytes(expected))
    raw_named_gz = write(tmp_path / "compressed.idx", idx_bytes(expected), compress=True)

    np.testing.assert_array_equal(read_idx(gz_named_raw), expected)
    np.testing.assert_array_equal(read_idx(str(raw_named_gz)), expected)


def test_read_idx_accepts_four_dimensions_and_empty_arrays(tmp_path):
    four_d = np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4)
    empty = np.zeros((0, 28, 28), dtype=np.uint8)

    assert read_idx(write(tmp_path / "a", idx_bytes(four_d))).shape == (1, 2, 3, 4)
    assert read_idx(write(tmp_path / "b", idx_bytes(empty), compress=True)).shape == (0, 28, 28)


def test_read_idx_result_is_writeable(tmp_path):
    array = read_idx(write(tmp_path / "a", idx_bytes(np.arange(4, dtype=">i4"), 0x0C)))
    array[0] = 42
    assert array[0] == 42


# --------------------------------------------------------------------------- read_idx: errors

VALID = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file|too short for an IDX header \\(0 bytes\\)"),
        (b"\x00\x00\x08", "too short for an IDX header"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"x", "not an IDX file"),
        (b"\x00\x07\x08\x01" + struct.pack(">I", 1) + b"x", "not an IDX file"),
        (b"\x00\x00\x0a\x01" + struct.pack(">I", 1) + b"x", "unknown IDX dtype code 0x0A"),
        (b"\x00\x00\xff\x01" + struct.pack(">I", 1) + b"x", "unknown IDX dtype code 0xFF"),
        (b"\x00\x00\x08\x00", "declares 0 dimensions"),
        (idx_header(0x08, (1,) * 5) + b"x", "declares 5 dimensions"),
        (b"\x00\x00\x08\xff" + b"\x00" * 16, "declares 255 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">2I", 3, 4), "truncated IDX header"),
        (VALID[:-1], "header says 12 bytes of data but the file has 11"),
        (VALID[:12], "header says 12 bytes of data but the file has 0"),
        (VALID + b"\x00", "trailing bytes"),
        (VALID + b"garbage" * 10, "trailing bytes"),
        (idx_header(0x08, (2**31 - 1, 2**31 - 1)), "limit"),
        (idx_header(0x0E, (2**28 + 1,)), "limit"),
        (idx_header(0x08, (0, 2**32 - 1)), "dimension 1"),
        (idx_header(0x08, (11894338, 0, 55040, 14088704)), "holds no data.*limit"),
    ],
    ids=[
        "empty",
        "short-header",
        "magic-byte-0",
        "magic-byte-1",
        "dtype-0x0A",
        "dtype-0xFF",
        "ndim-0",
        "ndim-5",
        "ndim-255",
        "truncated-dims",
        "truncated-payload",
        "payload-missing",
        "one-trailing-byte",
        "trailing-garbage",
        "huge-dims",
        "huge-float64",
        "huge-dim-times-zero",
        "empty-but-overflowing-dims",
    ],
)
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_read_idx_rejects_malformed_files(tmp_path, content, message, compress):
    path = write(tmp_path / "bad-idx1-ubyte", content, compress)

    with pytest.raises(ValueError, match=message) as raised:
        read_idx(path)

    assert str(path) in str(raised.value)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_forged_huge_header_fails_fast_without_allocating(tmp_path, compress):
    path = write(tmp_path / "forged", idx_header(0x08, (2**31 - 1, 2**31 - 1)), compress)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match="more than the 2147483648-byte limit"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert time.perf_counter() - start < 5
    assert peak < 1 << 20


def test_header_under_the_cap_with_little_data_allocates_little(tmp_path):
    claims_a_gib = idx_header(0x08, (1 << 15, 1 << 15)) + b"\x00" * 100
    path = write(tmp_path / "short.gz", claims_a_gib, compress=True)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"header says {1 << 30} bytes .* has 100$"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 8 << 20


def test_gzip_bomb_is_not_inflated(tmp_path):
    """A 64 MiB stream of zeros behind a header claiming 10 bytes: stop after 11."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    parts = [compressor.compress(idx_header(0x08, (10,)))]
    zeros = bytes(1 << 20)
    parts += [compressor.compress(zeros) for _ in range(64)]
    parts.append(compressor.flush())
    path = write(tmp_path / "bomb.gz", b"".join(parts))
    assert path.stat().st_size < 1 << 20

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="trailing bytes"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 8 << 20


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda gz: gz[: len(gz) // 2],  # stream cut short
        lambda gz: gz[:-8] + bytes(b ^ 0xFF for b in gz[-8:]),  # CRC and size trailer
        lambda gz: gz[:12] + b"\xff" * 8 + gz[20:],  # deflate data
        lambda gz: gz + b"not gzip",  # garbage after the member
        lambda gz: gz[:2],  # magic only
    ],
    ids=["truncated", "bad-trailer", "bad-deflate", "trailing-garbage", "magic-only"],
)
def test_corrupt_gzip_becomes_value_error(tmp_path, corrupt):
    content = idx_bytes(np.arange(200, dtype=np.uint8).reshape(10, 20))
    path = write(tmp_path / "corrupt.gz", corrupt(gzip.compress(content, mtime=0)))

    with pytest.raises(ValueError, match="corrupt gzip stream") as raised:
        read_idx(path)

    assert str(path) in str(raised.value)


def test_missing_file_is_file_not_found_naming_it(tmp_path):
    path = tmp_path / "nowhere-idx3-ubyte.gz"
    with pytest.raises(FileNotFoundError, match=r"nowhere-idx3-ubyte\.gz"):
        read_idx(path)


# --------------------------------------------------------------------------- read_idx: fuzzing

_SMALL_VALID = [
    idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3)),
    idx_bytes(np.arange(-3, 3, dtype=np.int8), 0x09),
    idx_bytes(np.arange(8, dtype=np.int16).reshape(2, 2, 2), 0x0B),
    idx_bytes(np.linspace(0, 1, 5, dtype=np.float32), 0x0D),
    idx_bytes(np.linspace(0, 1, 3, dtype=np.float64), 0x0E),
]


@st.composite
def mutated_idx_files(draw) -> bytes:
    """A valid small IDX file (raw or gz) after a few random mutations, or random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    content = bytearray(draw(st.sampled_from(_SMALL_VALID)))
    if draw(st.booleans()):
        content[2:] = _forge_header(draw, bytes(content[2:]))
    if draw(st.booleans()):
        content = bytearray(gzip.compress(bytes(content), mtime=0))
    for _ in range(draw(st.integers(0, 3))):
        content = _mutate(draw, content)
    return bytes(content)


def _forge_header(draw, rest: bytes) -> bytes:
    code = draw(st.sampled_from([*DTYPE_CODES, 0x00, 0x0A, 0xFF]))
    ndim = draw(st.integers(0, 6))
    dims = draw(
        st.lists(
            st.one_of(st.integers(0, 16), st.integers(0, 2**32 - 1)), min_size=ndim, max_size=ndim
        )
    )
    keep_payload = rest[2 + 4 * rest[1] :] if len(rest) >= 2 else b""
    return bytes([code, ndim]) + struct.pack(f">{ndim}I", *dims) + keep_payload


def _mutate(draw, content: bytearray) -> bytearray:
    kind = draw(st.sampled_from(["flip", "truncate", "append", "insert"]))
    if kind == "flip" and content:
        position = draw(st.integers(0, len(content) - 1))
        content[position] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del content[draw(st.integers(0, len(content))) :]
    elif kind == "append":
        content += draw(st.binary(min_size=1, max_size=16))
    elif kind == "insert":
        position = draw(st.integers(0, len(content)))
        content[position:position] = draw(st.binary(min_size=1, max_size=4))
    return content


@settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=mutated_idx_files())
@example(content=b"\x00\x00\x08\x04\x00\xb5~B\x00\x00\x00\x00\x00\x00\xd7\x00\x00\xd6\xfa\x00")
def test_read_idx_returns_an_array_or_raises_value_error(tmp_path, content):
    path = tmp_path / "fuzzed-idx-ubyte"
    path.write_bytes(content)

    try:
        array = read_idx(path)
    except ValueError as exc:
        assert str(path) in str(exc)
    else:
        assert isinstance(array, np.ndarray)
        assert array.dtype.isnative
        assert 1 <= array.ndim <= 4


# --------------------------------------------------------------------------- load_mnist


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No $MNISTNET_DATA, and an empty per-user cache under tmp_path."""
    monkeypatch.delenv("MNISTNET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "mnistnet"


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_load_mnist_reads_a_tiny_dataset(tmp_path, no_env, compress):
    arrays = write_dataset(tmp_path / "data", compress=compress)

    (x_train, y_train), (x_test, y_test) = load_mnist(tmp_path / "data", download=False)

    assert x_train.shape == (12, 12) and x_test.shape == (5, 12)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert x_train.flags.c_contiguous and x_test.flags.c_contiguous
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert y_train.dtype == np.uint8 and y_train.shape == (12,)
    assert y_test.dtype == np.uint8 and y_test.shape == (5,)
    expected = arrays[STEMS[0]].reshape(12, -1).astype(np.float32) / 255
    np.testing.assert_array_equal(x_train, expected)
    np.testing.assert_array_equal(y_train, arrays[STEMS[1]])
    np.testing.assert_array_equal(y_test, arrays[STEMS[3]])


def test_load_mnist_without_normalize_returns_flat_uint8(tmp_path, no_env):
    arrays = write_dataset(tmp_path / "data")

    (x_train, _), (x_test, _) = load_mnist(str(tmp_path / "data"), normalize=False)

    assert x_train.dtype == np.uint8 and x_train.shape == (12, 12)
    assert x_train.flags.c_contiguous
    np.testing.assert_array_equal(x_train, arrays[STEMS[0]].reshape(12, -1))
    np.testing.assert_array_equal(x_test, arrays[STEMS[2]].reshape(5, -1))


def test_load_mnist_accepts_mixed_raw_and_gz_files(tmp_path, no_env):
    arrays = write_dataset(tmp_path / "data", compress=True)
    gz = tmp_path / "data" / f"{STEMS[1]}.gz"
    (tmp_path / "data" / STEMS[1]).write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()

    (_, y_train), _ = load_mnist(tmp_path / "data")

    np.testing.assert_array_equal(y_train, arrays[STEMS[1]])


def test_load_mnist_path_missing_files_names_folder_and_files(tmp_path, no_env, monkeypatch):
    write_dataset(tmp_path / "complete")
    monkeypatch.setenv("MNISTNET_DATA", str(tmp_path / "complete"))
    folder = tmp_path / "partial"
    write_dataset(folder)
    (folder / f"{STEMS[1]}.gz").unlink()
    (folder / f"{STEMS[2]}.gz").unlink()

    with pytest.raises(FileNotFoundError) as raised:
        load_mnist(folder)

    message = str(raised.value)
    assert str(folder) in message
    assert STEMS[1] in message and STEMS[2] in message
    assert f"{STEMS[0]}[" not in message


def test_load_mnist_path_that_does_not_exist(tmp_path, no_env):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_mnist(tmp_path / "absent")


def _replace_file(folder: Path, stem: str, array: np.ndarray, code: int = 0x08) -> None:
    write(folder / f"{stem}.gz", idx_bytes(array, code), compress=True)


@pytest.mark.parametrize(
    ("stem", "array", "code", "message"),
    [
        (STEMS[1], np.zeros(11, np.uint8), 0x08, "holds 12 images but .* holds 11 labels"),
        (STEMS[3], np.zeros(6, np.uint8), 0x08, "holds 5 images but .* holds 6 labels"),
        (STEMS[0], np.zeros((12, 12), np.uint8), 0x08, "expected 3-D uint8 images, got 2-D"),
        (STEMS[2], np.zeros((5, 4, 3), np.int16), 0x0B, "expected 3-D uint8 images, got 3-D int16"),
        (STEMS[1], np.zeros((12, 1), np.uint8), 0x08, "expected 1-D uint8 labels, got 2-D"),
        (STEMS[3], np.zeros(5, np.float32), 0x0D, "expected 1-D uint8 labels, got 1-D float32"),
        (STEMS[2], np.zeros((5, 3, 4), np.uint8), 0x08, "image sizes differ: .* 4x3 .* 3x4"),
        (STEMS[0], np.zeros((0, 4, 3), np.uint8), 0x08, "holds 0 images but .* holds 12"),
    ],
    ids=[
        "train-counts",
        "test-counts",
        "images-2d",
        "images-int16",
        "labels-2d",
        "labels-float",
        "image-sizes",
        "no-images",
    ],
)
def test_load_mnist_rejects_inconsistent_datasets(tmp_path, no_env, stem, array, code, message):
    folder = tmp_path / "data"
    write_dataset(folder)
    _replace_file(folder, stem, array, code)

    with pytest.raises(ValueError, match=message):
        load_mnist(folder)


def test_load_mnist_rejects_empty_dataset(tmp_path, no_env):
    folder = tmp_path / "data"
    write_dataset(folder, n_train=0)

    with pytest.raises(ValueError, match="no image data"):
        load_mnist(folder)


def test_load_mnist_reports_malformed_file_by_name(tmp_path, no_env):
    folder = tmp_path / "data"
    write_dataset(folder)
    bad = folder / f"{STEMS[2]}.gz"
    bad.write_bytes(bad.read_bytes()[:-10])

    with pytest.raises(ValueError, match=STEMS[2]):
        load_mnist(folder)


# --------------------------------------------------------------------------- search order


def _n_train(result) -> int:
    (x_train, _), _ = result
    return x_train.shape[0]


def test_search_order_path_then_env_then_cache(tmp_path, no_env, monkeypatch):
    write_dataset(tmp_path / "explicit", n_train=3)
    write_dataset(tmp_path / "env", n_train=4)
    write_dataset(no_env, n_train=5)
    monkeypatch.setenv("MNISTNET_DATA", str(tmp_path / "env"))

    assert _n_train(load_mnist(tmp_path / "explicit", download=False)) == 3
    assert _n_train(load_mnist(download=False)) == 4
    monkeypatch.delenv("MNISTNET_DATA")
    assert _n_train(load_mnist(download=False)) == 5


def test_incomplete_env_folder_warns_and_falls_back_to_cache(tmp_path, no_env, monkeypatch):
    write_dataset(tmp_path / "env", n_train=4)
    (tmp_path / "env" / f"{STEMS[3]}.gz").unlink()
    write_dataset(no_env, n_train=5)
    monkeypatch.setenv("MNISTNET_DATA", str(tmp_path / "env"))

    with pytest.warns(UserWarning, match=f"MNISTNET_DATA=.* lacks {STEMS[3]}"):
        assert _n_train(load_mnist(download=False)) == 5


def test_nothing_found_without_download_says_where_to_put_files(tmp_path, no_env, monkeypatch):
    monkeypatch.setenv("MNISTNET_DATA", str(tmp_path / "empty-env"))

    with pytest.raises(FileNotFoundError) as raised, pytest.warns(UserWarning):
        load_mnist(download=False)

    message = str(raised.value)
    assert str(no_env) in message and str(tmp_path / "empty-env") in message
    assert "MNISTNET_DATA" in message and "path=" in message


def test_cache_dir_follows_xdg_cache_home_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mnistnet"

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "mnistnet"

    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the spec says
    assert cache_dir() == tmp_path / "home" / ".cache" / "mnistnet"


# --------------------------------------------------------------------------- the real dataset


def _real_data_folder() -> Path:
    folder = os.environ.get("MNISTNET_DATA")
    if not folder:
        pytest.skip("set MNISTNET_DATA to a folder holding the four MNIST files to run this")
    path = Path(folder)
    for stem in STEMS:
        if not ((path / stem).is_file() or (path / f"{stem}.gz").is_file()):
            pytest.skip(f"MNISTNET_DATA={folder} does not hold {stem}[.gz]")
    return path


def _sha256_of_content(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        compressed = stream.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    with opener(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_real_mnist_files_have_the_published_content():
    folder = _real_data_folder()
    for stem in STEMS:
        path = folder / stem if (folder / stem).is_file() else folder / f"{stem}.gz"
        assert _sha256_of_content(path) == MNIST_CONTENT_SHA256[stem], path


def test_load_real_mnist():
    _real_data_folder()

    (x_train, y_train), (x_test, y_test) = load_mnist(download=False)

    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert x_train.flags.c_contiguous and x_test.flags.c_contiguous
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert 0.0 <= x_test.min() and x_test.max() <= 1.0
    assert y_train.dtype == np.uint8 and y_test.dtype == np.uint8
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
