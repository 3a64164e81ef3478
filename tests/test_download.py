"""Tests for mnistnet.data.download_mnist against local HTTP servers on 127.0.0.1.

Each "mirror" is a folder served by one ThreadingHTTPServer (tests/mirror_server.py): a good
copy, a corrupted copy, a truncated copy, an empty folder (404), a handler that closes the
connection early, a port nothing listens on and a socket that never answers. The served files
are tiny synthetic IDX files; one test serves the real files when $MNISTNET_DATA names a folder
holding them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from mirror_server import Server, dead_mirror_url, running_server

import mnistnet.data as data_module
from mnistnet.data import FILES, DownloadError, cache_dir, download_mnist, load_mnist

NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# From shared/data/mnist/README.md: sha256 of each file's decompressed content.
MNIST_CONTENT_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
TIMEOUT = 2.0  # seconds; every download in these tests is local


# --------------------------------------------------------------------------- fixtures


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


@pytest.fixture(scope="module")
def dataset() -> dict[str, bytes]:
    """The four .gz files of a tiny synthetic MNIST-layout dataset, by name."""
    rng = np.random.default_rng(1)
    return {
        NAMES[0]: idx_gz(rng.integers(0, 256, (20, 28, 28))),
        NAMES[1]: idx_gz(rng.integers(0, 10, 20)),
        NAMES[2]: idx_gz(rng.integers(0, 256, (8, 28, 28))),
        NAMES[3]: idx_gz(rng.integers(0, 10, 8)),
    }


@pytest.fixture
def checksums(dataset) -> dict[str, str]:
    return {name: sha256(content) for name, content in dataset.items()}


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    """No proxies (requests must reach 127.0.0.1 directly), no real cache, no MNISTNET_DATA."""
    for variable in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.upper(), raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path / "served") as running:
        yield running


@pytest.fixture
def dead_mirror() -> str:
    return dead_mirror_url()


@pytest.fixture
def silent_mirror():
    """A URL whose server accepts connections (in the kernel backlog) and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/mnist/"
    finally:
        listener.close()


@pytest.fixture
def mirrors(server, dataset, dead_mirror) -> dict[str, str]:
    """Every kind of mirror, by kind, with the synthetic dataset laid out on each."""
    for name, content in dataset.items():
        _serve(server, "good", name, content)
        _serve(server, "corrupt", name, _flip_bytes(content))
        _serve(server, "truncated", name, content[: len(content) // 2])
    urls = {kind: server.mirror(kind) for kind in ("good", "corrupt", "truncated", "missing")}
    urls["short"] = server.mirror("short")
    urls["dead"] = dead_mirror
    return urls


def _serve(server: Server, folder: str, name: str, content: bytes) -> None:
    (server.root / folder).mkdir(exist_ok=True)
    (server.root / folder / name).write_bytes(content)


def _flip_bytes(content: bytes) -> bytes:
    middle = len(content) // 2
    return (
        content[:middle]
        + bytes(b ^ 0xFF for b in content[middle : middle + 4])
        + content[middle + 4 :]
    )


def _listing(folder: Path) -> list[str]:
    """Every entry in folder, hidden ones (temporary files) included."""
    return sorted(os.listdir(folder)) if folder.exists() else []


# --------------------------------------------------------------------------- download_mnist


def test_falls_through_every_kind_of_bad_mirror_to_the_good_one(
    tmp_path, server, mirrors, dataset, checksums
):
    order = ["dead", "missing", "corrupt", "truncated", "short", "good"]
    dest = tmp_path / "dest"

    result = download_mnist(
        dest, mirrors=[mirrors[kind] for kind in order], files=checksums, timeout=TIMEOUT
    )

    assert result == dest
    assert _listing(dest) == sorted(NAMES)
    for name, content in dataset.items():
        assert (dest / name).read_bytes() == content
    for kind in ["missing", "corrupt", "truncated", "short", "good"]:
        assert sorted(Path(p).name for p in server.requests_to(kind)) == sorted(NAMES), kind


def test_every_mirror_failing_names_them_and_says_where_to_put_files(
    tmp_path, server, mirrors, checksums
):
    order = ["dead", "missing", "corrupt", "truncated", "short"]
    dest = tmp_path / "dest"

    with pytest.raises(DownloadError) as raised:
        download_mnist(
            dest, mirrors=[mirrors[kind] for kind in order], files=checksums, timeout=TIMEOUT
        )

    assert isinstance(raised.value, RuntimeError)
    message = str(raised.value)
    assert f"could not download {NAMES[0]}" in message
    for kind in order:
        assert mirrors[kind] + NAMES[0] in message, kind
    assert "HTTP 404" in message
    assert message.count("sha256 mismatch") == 2  # corrupt and truncated
    assert "connection closed after" in message
    assert "refused" in message.lower()
    assert str(cache_dir()) in message and "MNISTNET_DATA" in message and "path=" in message
    assert _listing(dest) == []  # no temporary file, no unverified file


def test_file_failing_its_checksum_everywhere_is_not_left_but_verified_ones_stay(
    tmp_path, server, mirrors, dataset, checksums
):
    for name, content in dataset.items():
        broken = name == NAMES[2]
        _serve(server, "partial", name, _flip_bytes(content) if broken else content)
        if not broken:
            _serve(server, "partial-2", name, content)
    (server.root / "partial-2" / NAMES[2]).write_bytes(dataset[NAMES[2]][:-1])
    dest = tmp_path / "dest"

    with pytest.raises(DownloadError, match=f"could not download {NAMES[2]}"):
        download_mnist(
            dest,
            mirrors=[server.mirror("partial"), server.mirror("partial-2")],
            files=checksums,
            timeout=TIMEOUT,
        )

    assert NAMES[2] not in _listing(dest)
    assert all(name.endswith(".gz") and not name.startswith(".") for name in _listing(dest))
    for name in _listing(dest):
        assert (dest / name).read_bytes() == dataset[name]


def test_files_already_verified_are_not_downloaded_again(
    tmp_path, server, mirrors, dataset, checksums
):
    dest = tmp_path / "dest"
    download_mnist(dest, mirrors=[mirrors["good"]], files=checksums, timeout=TIMEOUT)
    assert len(server.requests) == 4

    download_mnist(dest, mirrors=[mirrors["good"]], files=checksums, timeout=TIMEOUT)
    assert len(server.requests) == 4

    (dest / NAMES[1]).write_bytes(b"stale or damaged")
    download_mnist(dest, mirrors=[mirrors["good"]], files=checksums, timeout=TIMEOUT)
    assert server.requests[4:] == [f"/good/{NAMES[1]}"]
    assert (dest / NAMES[1]).read_bytes() == dataset[NAMES[1]]
    assert _listing(dest) == sorted(NAMES)


def test_a_mirror_that_never_answers_times_out(tmp_path, mirrors, silent_mirror, checksums):
    dest = tmp_path / "dest"
    one_file = {NAMES[3]: checksums[NAMES[3]]}
    start = time.monotonic()

    download_mnist(dest, mirrors=[silent_mirror, mirrors["good"]], files=one_file, timeout=0.3)

    assert time.monotonic() - start < 10
    assert _listing(dest) == [NAMES[3]]


def test_dest_defaults_to_the_cache_dir(mirrors, checksums):
    result = download_mnist(mirrors=[mirrors["good"]], files=checksums, timeout=TIMEOUT)

    assert result == cache_dir()
    assert _listing(cache_dir()) == sorted(NAMES)


def test_progress_bar_on_request_and_silent_otherwise(tmp_path, mirrors, checksums, capsys):
    one_file = {NAMES[0]: checksums[NAMES[0]]}
    download_mnist(tmp_path / "a", mirrors=[mirrors["good"]], files=one_file, progress=True)
    shown = capsys.readouterr()
    assert shown.out == ""
    assert shown.err.startswith(f"\r{NAMES[0]}: [") and shown.err.endswith("B\n")
    assert "#" * 40 in shown.err

    download_mnist(tmp_path / "b", mirrors=[mirrors["good"]], files=one_file, progress=False)
    download_mnist(tmp_path / "c", mirrors=[mirrors["good"]], files=one_file)  # not a tty
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- load_mnist


def test_load_mnist_downloads_into_the_empty_cache(monkeypatch, server, mirrors, checksums):
    monkeypatch.delenv("MNISTNET_DATA", raising=False)
    monkeypatch.setattr(data_module, "MIRRORS", (mirrors["dead"], mirrors["good"]))
    monkeypatch.setattr(data_module, "FILES", checksums)
    assert not cache_dir().exists()

    (x_train, y_train), (x_test, y_test) = load_mnist()

    assert x_train.shape == (20, 784) and x_test.shape == (8, 784)
    assert x_train.dtype == np.float32 and y_train.dtype == np.uint8
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert y_test.shape == (8,)
    assert _listing(cache_dir()) == sorted(NAMES)

    load_mnist()
    assert len(server.requests_to("good")) == 4  # the second load reads the cache


def test_load_mnist_without_download_makes_no_request(monkeypatch, server, mirrors, checksums):
    monkeypatch.delenv("MNISTNET_DATA", raising=False)
    monkeypatch.setattr(data_module, "MIRRORS", (mirrors["good"],))
    monkeypatch.setattr(data_module, "FILES", checksums)

    with pytest.raises(FileNotFoundError, match="download=False"):
        load_mnist(download=False)

    assert server.requests == []


def test_load_mnist_reports_failed_download(monkeypatch, server, mirrors, checksums):
    monkeypatch.delenv("MNISTNET_DATA", raising=False)
    monkeypatch.setattr(data_module, "MIRRORS", (mirrors["missing"],))
    monkeypatch.setattr(data_module, "FILES", checksums)

    with pytest.raises(DownloadError, match="HTTP 404"):
        load_mnist()

    assert _listing(cache_dir()) == []


# --------------------------------------------------------------------------- the real files


def test_downloads_the_real_files(tmp_path, server):
    real_data_env = os.environ.get("MNISTNET_DATA")
    if not real_data_env:
        pytest.skip("set MNISTNET_DATA to a folder holding the four MNIST .gz files to run this")
    source = Path(real_data_env)
    if not all((source / name).is_file() for name in NAMES):
        pytest.skip(f"MNISTNET_DATA={source} does not hold the four .gz files")
    for name in NAMES:
        (server.root / "real").mkdir(exist_ok=True)
        (server.root / "real" / name).symlink_to((source / name).resolve())
    # The mirrors' sha256 where the local .gz is the mirrors' file; a recompressed local copy
    # (same content, different .gz bytes) is checked by its own hash and its content below.
    served = {name: sha256((source / name).read_bytes()) for name in NAMES}
    files = {name: FILES[name] if FILES[name] == served[name] else served[name] for name in NAMES}
    dest = tmp_path / "dest"

    download_mnist(dest, mirrors=[server.mirror("real")], files=files, timeout=TIMEOUT)

    assert _listing(dest) == sorted(NAMES)
    for name in NAMES:
        content = gzip.decompress((dest / name).read_bytes())
        assert sha256(content) == MNIST_CONTENT_SHA256[name.removesuffix(".gz")], name
