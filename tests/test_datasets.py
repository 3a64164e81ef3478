"""Tests for mnistnet.datasets: every dataset of the MNIST family, downloaded from mirrors on
127.0.0.1 (tests/mirror_server.py) in its own packaging, or read offline.

The served files are tiny synthetic datasets made here, packaged as each publisher ships them:
four .gz IDX files (MNIST, Fashion-MNIST, KMNIST), QMNIST's .gz files with extended int32
labels, and NIST's gzip.zip holding every EMNIST split's .gz files under gzip/, stored
transposed with the letters labelled 1-26. Their real checksums cannot match, so each test
serves them under the checksums of the synthetic files (same algorithm as the real table's);
one test checks the real table's entries are well-formed.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import string
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from mirror_server import Server, dead_mirror_url, running_server

import mnistnet as mn
from mnistnet import datasets
from mnistnet.data import FILES, MIRRORS, Checksum, DownloadError, cache_dir, load_mnist

N_TRAIN, N_TEST, SIDE = 7, 4, 28
REAL_MNIST = os.environ.get("MNISTNET_DATA")  # read before the fixtures clear it

# Spelled out independently of the module's table: torchvision's class lists and EMNIST's
# mapping files (ASCII codes per label).
EXPECTED_CLASS_NAMES = {
    "mnist": tuple("0123456789"),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    "emnist-digits": tuple("0123456789"),
    "emnist-letters": tuple("abcdefghijklmnopqrstuvwxyz"),
    "emnist-balanced": tuple(chr(code) for code in [*range(48, 58), *range(65, 91), 97, 98,
                                                    100, 101, 102, 103, 104, 110, 113, 114, 116]),
    "emnist-byclass": tuple(chr(code) for code in [*range(48, 58), *range(65, 91),
                                                   *range(97, 123)]),
    "qmnist": tuple("0123456789"),
}
EMNIST_SPLITS = ("emnist-digits", "emnist-letters", "emnist-balanced", "emnist-byclass")


# --------------------------------------------------------------------------- synthetic files


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 or int32 array."""
    code, stored = {np.uint8: (0x08, "u1"), np.int32: (0x0C, ">i4")}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=stored).tobytes()


def gz(content: bytes) -> bytes:
    return gzip.compress(content, mtime=0)


def upright_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random images, the first one with a bright bar along its top row and a dark left
    column: an image that its transpose (a bar down the left side) cannot pass for."""
    images = rng.integers(0, 200, (n, SIDE, SIDE), dtype=np.uint8)
    images[0, :, 0] = 0
    images[0, 0, :] = 255
    return images


@dataclass
class Synthetic:
    """A tiny dataset as load() must return it, and its files as the publisher stores them."""

    x_train: np.ndarray  # (n, 28, 28) uint8, upright
    y_train: np.ndarray  # 0-based classes
    x_test: np.ndarray
    y_test: np.ndarray
    stored: dict[str, bytes]  # stem + ".gz" -> bytes: transposed, 1-based, extended labels


def make_synthetic(info: datasets.DatasetInfo, seed: int) -> Synthetic:
    rng = np.random.default_rng(seed)
    n_classes = len(EXPECTED_CLASS_NAMES[info.name])
    splits = []
    for n in (N_TRAIN, N_TEST):
        images, labels = upright_images(rng, n), rng.integers(0, n_classes, n).astype(np.uint8)
        labels[:2] = 0, n_classes - 1  # both ends of the class range
        splits += [images, labels]
    stored = {}
    for stem, array in zip(info.stems, splits, strict=True):
        stored[f"{stem}.gz"] = gz(idx_bytes(as_stored(info, array, rng)))
    return Synthetic(*splits, stored=stored)


def as_stored(info: datasets.DatasetInfo, array: np.ndarray, rng) -> np.ndarray:
    """An array as the dataset's files hold it."""
    if array.ndim == 3:
        return array.transpose(0, 2, 1) if info.name.startswith("emnist") else array
    if info.name == "emnist-letters":
        return array + 1
    if info.name == "qmnist":  # 8 columns: the class, then writer ids, indices, ...
        extended = rng.integers(0, 3000, (array.shape[0], 8)).astype(np.int32)
        extended[:, 0] = array
        return extended
    return array


def served_files(info: datasets.DatasetInfo, synthetic: dict[str, Synthetic]) -> dict[str, bytes]:
    """What the mirrors of ``info`` serve for the datasets in ``synthetic`` (its folder's)."""
    stored = {name: content for data in synthetic.values() for name, content in data.stored.items()}
    if info.archive is None:
        return stored
    # NIST's zip: a gzip/ folder holding each split's .gz files and its mapping text file.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("gzip/", "")
        for name, content in stored.items():
            archive.writestr(f"gzip/{name}", content)
        archive.writestr("gzip/emnist-letters-mapping.txt", "1 65 97\n")
    return {info.archive: buffer.getvalue()}


def flip_bytes(content: bytes) -> bytes:
    middle = len(content) // 2
    flipped = bytes(b ^ 0xFF for b in content[middle : middle + 4])
    return content[:middle] + flipped + content[middle + 4 :]


def digest(checksum: Checksum, content: bytes) -> str:
    return hashlib.new(checksum.algorithm, content).hexdigest()


def listing(folder: Path) -> list[str]:
    """Every entry in folder, hidden ones (temporary files) included."""
    return sorted(os.listdir(folder)) if folder.exists() else []


def write_folder(folder: Path, data: Synthetic, compress: bool = True) -> Path:
    """The dataset's four files in ``folder``, as a user who unpacked them keeps them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in data.stored.items():
        if compress:
            (folder / name).write_bytes(content)
        else:
            (folder / name.removesuffix(".gz")).write_bytes(gzip.decompress(content))
    return folder


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    """No proxies (requests must reach 127.0.0.1 directly), an empty cache, no data variables."""
    for variable in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.upper(), raising=False)
    monkeypatch.delenv("MNISTNET_DATA", raising=False)
    monkeypatch.delenv("MNISTNET_DATASETS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path / "served") as running:
        yield running


@pytest.fixture
def publish(monkeypatch, server: Server):
    """publish(name, mirrors) serves the synthetic files of ``name``'s folder (every EMNIST
    split shares one zip) on the good mirror, a corrupted copy on the corrupt one, nothing on
    "missing"; points the table at ``mirrors`` (kinds, in order) with the synthetic files'
    checksums; returns the Synthetic of each dataset in that folder, by name."""

    def publish_folder(name: str, mirrors=("dead", "good")) -> dict[str, Synthetic]:
        info = datasets.DATASETS[name]
        sharing = [row for row in datasets.DATASETS.values() if row.folder == info.folder]
        synthetic = {row.name: make_synthetic(row, seed) for seed, row in enumerate(sharing)}
        served = served_files(info, synthetic)
        for kind, corrupt in (("good", False), ("corrupt", True)):
            (server.root / kind).mkdir(exist_ok=True)
            for file_name, content in served.items():
                (server.root / kind / file_name).write_bytes(
                    flip_bytes(content) if corrupt else content
                )
        urls = tuple(dead_mirror_url() if kind == "dead" else server.mirror(kind)
                     for kind in mirrors)
        checksums = {file_name: Checksum(info.files[file_name].algorithm,
                                         digest(info.files[file_name], content))
                     for file_name, content in served.items()}
        table = dict(datasets.DATASETS)
        for row in sharing:
            table[row.name] = dataclasses.replace(
                row, mirrors=urls, files=MappingProxyType(checksums)
            )
        monkeypatch.setattr(datasets, "DATASETS", MappingProxyType(table))
        return synthetic

    return publish_folder


def cache_folder(name: str) -> Path:
    """Where the downloads of ``name`` go: MNIST's in the cache itself, as load_mnist's."""
    return cache_dir() if name == "mnist" else cache_dir() / datasets.DATASETS[name].folder


def assert_loaded(result: datasets.Dataset, expected: Synthetic, name: str) -> None:
    """result holds expected's images, upright and flattened to float32 in [0, 1], and its
    0-based labels, with the dataset's class names."""
    (x_train, y_train), (x_test, y_test) = result
    assert x_train.shape == (N_TRAIN, SIDE * SIDE) and x_test.shape == (N_TEST, SIDE * SIDE)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert x_train.flags.c_contiguous and x_test.flags.c_contiguous
    assert y_train.dtype == np.uint8 and y_train.shape == (N_TRAIN,)
    assert y_test.dtype == np.uint8 and y_test.shape == (N_TEST,)
    top_row, left_column = x_train[0].reshape(SIDE, SIDE)[0], x_train[0].reshape(SIDE, SIDE)[1:, 0]
    assert np.all(top_row == 1.0) and np.all(left_column == 0.0), "the image is not upright"
    for x, images in ((x_train, expected.x_train), (x_test, expected.x_test)):
        np.testing.assert_array_equal(x, images.reshape(len(images), -1).astype(np.float32) / 255)
    np.testing.assert_array_equal(y_train, expected.y_train)
    np.testing.assert_array_equal(y_test, expected.y_test)
    assert result.name == name
    assert result.class_names == EXPECTED_CLASS_NAMES[name]


# --------------------------------------------------------------------------- each dataset


@pytest.mark.parametrize("name", datasets.NAMES)
def test_each_dataset_downloads_into_its_cache_folder_and_loads_upright(name, publish, server):
    synthetic = publish(name, mirrors=("dead", "good"))

    result = datasets.load(name)

    assert_loaded(result, synthetic[name], name)
    info = datasets.DATASETS[name]
    downloaded = {f"{stem}.gz" for row in synthetic for stem in datasets.DATASETS[row].stems}
    assert set(listing(cache_folder(name))) >= downloaded
    assert not [entry for entry in listing(cache_folder(name)) if entry.startswith(".")]
    if info.archive is not None:  # unpacked (every split, nothing but the .gz files) and gone
        assert listing(cache_folder(name)) == sorted(downloaded)
        assert server.requests_to("good") == [f"/good/{info.archive}"]
    else:
        assert sorted(server.requests_to("good")) == sorted(f"/good/{n}" for n in info.files)


@pytest.mark.parametrize("name", ["fashion-mnist", "emnist-letters", "qmnist"])
def test_normalize_false_returns_the_uint8_pixels_upright(name, publish):
    expected = publish(name)[name]

    (x_train, y_train), (x_test, _) = datasets.load(name, normalize=False)

    assert x_train.dtype == np.uint8 and x_train.shape == (N_TRAIN, SIDE * SIDE)
    assert x_train.flags.c_contiguous and x_test.flags.c_contiguous
    np.testing.assert_array_equal(x_train, expected.x_train.reshape(N_TRAIN, -1))
    np.testing.assert_array_equal(x_test, expected.x_test.reshape(N_TEST, -1))
    np.testing.assert_array_equal(y_train, expected.y_train)


def test_emnist_letters_labels_come_back_zero_based(publish):
    expected = publish("emnist-letters")["emnist-letters"]

    data = datasets.load("emnist-letters")

    (_, y_train), _ = data
    assert y_train.min() == 0 and y_train.max() == 25
    np.testing.assert_array_equal(y_train, expected.y_train)
    assert [data.class_names[y] for y in y_train[:2]] == ["a", "z"]


def test_mnist_row_is_mnists_mirrors_and_files():
    info = datasets.DATASETS["mnist"]

    assert info.mirrors == MIRRORS
    assert info.files == {name: Checksum("sha256", sha256) for name, sha256 in FILES.items()}


# --------------------------------------------------------------------------- checksums


@pytest.mark.parametrize("name", ["kmnist", "emnist-balanced", "qmnist", "mnist"])
def test_corrupt_download_is_refused_and_the_next_mirror_tried(name, publish, server):
    synthetic = publish(name, mirrors=("corrupt", "missing", "good"))

    result = datasets.load(name)

    assert_loaded(result, synthetic[name], name)
    served = sorted(server.requests_to("good"))
    assert served and sorted(server.requests_to("corrupt")) == [p.replace("/good/", "/corrupt/")
                                                                for p in served]
    assert len(server.requests_to("missing")) == len(served)
    assert not [entry for entry in listing(cache_folder(name)) if entry.startswith(".")]


@pytest.mark.parametrize("name", ["fashion-mnist", "emnist-digits"])
def test_every_mirror_corrupt_is_a_download_error_that_says_what_to_do(name, publish):
    publish(name, mirrors=("corrupt", "corrupt"))

    with pytest.raises(DownloadError) as raised:
        datasets.load(name)

    message = str(raised.value)
    assert message.count("md5 mismatch") == 2
    assert "MNISTNET_DATASETS" in message and "path=" in message
    assert str(cache_folder(name)) in message
    assert listing(cache_folder(name)) == []  # nothing unverified kept, no temporary file


# --------------------------------------------------------------------------- cache and offline


def test_second_load_reads_the_cache(publish, server):
    publish("kmnist")
    datasets.load("kmnist")
    requests = len(server.requests)

    datasets.load("kmnist", download=False)
    datasets.load("kmnist")

    assert len(server.requests) == requests == 4


def test_emnist_zip_is_fetched_once_for_every_split(publish, server):
    synthetic = publish("emnist-letters")

    for name in EMNIST_SPLITS:
        assert_loaded(datasets.load(name), synthetic[name], name)
    datasets.download("emnist-byclass")

    assert server.requests_to("good") == ["/good/gzip.zip"]


def test_emnist_zip_put_in_the_cache_by_hand_is_verified_and_unpacked(publish, server):
    synthetic = publish("emnist-digits", mirrors=("missing",))
    folder = cache_folder("emnist-digits")
    folder.mkdir(parents=True)
    (folder / "gzip.zip").write_bytes((server.root / "good" / "gzip.zip").read_bytes())

    assert_loaded(datasets.load("emnist-digits"), synthetic["emnist-digits"], "emnist-digits")
    assert server.requests == []
    assert "gzip.zip" not in listing(folder)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("name", ["fashion-mnist", "emnist-byclass", "qmnist"])
def test_path_loads_a_folder_offline(name, compress, tmp_path, publish, server):
    synthetic = publish(name)
    folder = write_folder(tmp_path / "mine", synthetic[name], compress)

    assert_loaded(datasets.load(name, path=folder), synthetic[name], name)
    assert_loaded(datasets.load(name, str(folder), download=False), synthetic[name], name)
    assert server.requests == []


def test_env_var_names_a_folder_with_one_subfolder_per_dataset(tmp_path, monkeypatch, publish,
                                                               server):
    kmnist, letters = publish("kmnist")["kmnist"], publish("emnist-letters")["emnist-letters"]
    write_folder(tmp_path / "all" / "kmnist", kmnist)
    write_folder(tmp_path / "all" / "emnist", letters)
    monkeypatch.setenv("MNISTNET_DATASETS", str(tmp_path / "all"))

    assert_loaded(datasets.load("kmnist"), kmnist, "kmnist")
    assert_loaded(datasets.load("emnist-letters"), letters, "emnist-letters")
    assert server.requests == []
    assert not cache_dir().exists()


def test_env_folder_lacking_files_warns_and_falls_back_to_the_cache(tmp_path, monkeypatch, publish,
                                                                    server):
    synthetic = publish("qmnist")["qmnist"]
    write_folder(tmp_path / "all" / "qmnist", synthetic)
    (tmp_path / "all" / "qmnist" / "qmnist-test-labels-idx2-int.gz").unlink()
    monkeypatch.setenv("MNISTNET_DATASETS", str(tmp_path / "all"))

    with pytest.warns(UserWarning, match="MNISTNET_DATASETS/qmnist=.* lacks "
                                         "qmnist-test-labels-idx2-int; looking in .*qmnist"):
        assert_loaded(datasets.load("qmnist"), synthetic, "qmnist")
    assert len(server.requests_to("good")) == 4


def test_mnist_is_where_load_mnist_finds_it(tmp_path, monkeypatch, publish, server):
    synthetic = publish("mnist")["mnist"]
    write_folder(tmp_path / "mnist-env", synthetic)
    monkeypatch.setenv("MNISTNET_DATA", str(tmp_path / "mnist-env"))
    assert_loaded(datasets.load("mnist"), synthetic, "mnist")
    assert server.requests == []
    monkeypatch.delenv("MNISTNET_DATA")

    assert_loaded(datasets.load("mnist"), synthetic, "mnist")  # downloads into the cache
    (x_train, _), _ = load_mnist(download=False)  # which load_mnist reads

    np.testing.assert_array_equal(x_train, datasets.load("mnist")[0][0])
    assert len(server.requests_to("good")) == 4


def test_mnist_looks_in_mnistnet_data_then_in_mnistnet_datasets(tmp_path, monkeypatch, publish,
                                                                server):
    synthetic = publish("mnist")["mnist"]
    write_folder(tmp_path / "all" / "mnist", synthetic)
    monkeypatch.setenv("MNISTNET_DATASETS", str(tmp_path / "all"))
    monkeypatch.setenv("MNISTNET_DATA", str(tmp_path / "empty"))

    with pytest.warns(UserWarning, match=r"MNISTNET_DATA=.*empty lacks .* looking in .*all.mnist"):
        assert_loaded(datasets.load("mnist"), synthetic, "mnist")
    assert server.requests == []


# --------------------------------------------------------------------------- errors


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as raised:
        datasets.load("fashion_mnist")

    message = str(raised.value)
    assert "unknown dataset 'fashion_mnist'" in message
    assert "did you mean 'fashion-mnist'?" in message
    assert message.endswith("known datasets: " + ", ".join(EXPECTED_CLASS_NAMES))
    for call in (datasets.class_names, datasets.download):
        with pytest.raises(ValueError, match="known datasets: mnist, fashion-mnist"):
            call("cifar-10")


@pytest.mark.parametrize("name", ["kmnist", "emnist-balanced"])
def test_folder_missing_files_names_them(name, tmp_path, publish):
    synthetic = publish(name)[name]
    folder = write_folder(tmp_path / "mine", synthetic)
    train_labels, test_images = datasets.DATASETS[name].stems[1:3]
    (folder / f"{train_labels}.gz").unlink()
    (folder / f"{test_images}.gz").unlink()

    with pytest.raises(FileNotFoundError) as raised:
        datasets.load(name, path=folder)

    message = str(raised.value)
    assert str(folder) in message and f"missing {train_labels}[.gz], {test_images}[.gz]" in message
    if datasets.DATASETS[name].archive is not None:
        assert message.endswith("gzip.zip holds them in its gzip/ folder: unzip it and pass "
                                "that folder")


def test_nothing_found_without_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MNISTNET_DATASETS", str(tmp_path / "empty"))

    with pytest.raises(FileNotFoundError) as raised, pytest.warns(UserWarning, match="lacks"):
        datasets.load("emnist-letters", download=False)

    message = str(raised.value)
    assert "EMNIST Letters files not found in" in message and "download=False" in message
    assert str(tmp_path / "empty" / "emnist") in message
    assert str(cache_dir() / "emnist") in message
    assert "emnist-letters-train-images-idx3-ubyte" in message and "gzip.zip" in message
    assert "MNISTNET_DATASETS=DIR" in message and "path=" in message


def test_labels_outside_the_classes_are_refused(tmp_path, publish):
    synthetic = publish("emnist-letters")["emnist-letters"]
    folder = write_folder(tmp_path / "mine", synthetic)
    labels = np.arange(N_TRAIN, dtype=np.uint8)  # starts at 0: not a letters label
    (folder / "emnist-letters-train-labels-idx1-ubyte.gz").write_bytes(gz(idx_bytes(labels)))

    with pytest.raises(ValueError, match=r"train-labels.*: label 0 is outside 1\.\.26"):
        datasets.load("emnist-letters", path=folder)


def test_qmnist_labels_must_be_its_extended_labels(tmp_path, publish):
    synthetic = publish("qmnist")["qmnist"]
    folder = write_folder(tmp_path / "mine", synthetic)
    plain = gz(idx_bytes(synthetic.y_test))  # MNIST-style 1-D labels
    (folder / "qmnist-test-labels-idx2-int.gz").write_bytes(plain)

    with pytest.raises(ValueError, match=r"test-labels-idx2-int.*expected QMNIST's extended"):
        datasets.load("qmnist", path=folder)


def test_qmnist_class_column_outside_a_byte_is_refused_not_wrapped(tmp_path, publish):
    synthetic = publish("qmnist")["qmnist"]
    folder = write_folder(tmp_path / "mine", synthetic)
    extended = np.zeros((N_TEST, 8), np.int32)
    extended[-1, 0] = 256  # uint8 would wrap it to class 0
    (folder / "qmnist-test-labels-idx2-int.gz").write_bytes(gz(idx_bytes(extended)))

    with pytest.raises(ValueError, match=r"label 256 in column 0 is outside 0\.\.255"):
        datasets.load("qmnist", path=folder)


def test_emnist_images_must_be_square(tmp_path, publish):
    synthetic = publish("emnist-digits")["emnist-digits"]
    folder = write_folder(tmp_path / "mine", synthetic)
    for stem in ("emnist-digits-train-images-idx3-ubyte", "emnist-digits-test-images-idx3-ubyte"):
        n = N_TRAIN if "train" in stem else N_TEST
        (folder / f"{stem}.gz").write_bytes(gz(idx_bytes(np.zeros((n, 28, 27), np.uint8))))

    with pytest.raises(ValueError, match=r"train-images.*expected square images.*28x27"):
        datasets.load("emnist-digits", path=folder)


def test_train_and_test_images_of_different_sizes_are_refused(tmp_path, publish):
    synthetic = publish("kmnist")["kmnist"]
    folder = write_folder(tmp_path / "mine", synthetic)
    small = gz(idx_bytes(np.zeros((N_TEST, 14, 14), np.uint8)))
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(small)

    with pytest.raises(ValueError, match=r"image sizes differ: .* 28x28 images, .* 14x14"):
        datasets.load("kmnist", path=folder)


# --------------------------------------------------------------------------- the API


def test_result_unpacks_indexes_and_pickles_like_load_mnists(publish):
    publish("fashion-mnist")

    data = datasets.load("fashion-mnist", normalize=False)

    assert isinstance(data, tuple) and len(data) == 2
    assert data[0] is data.train and data[1] is data.test
    (x_train, y_train), (x_test, y_test) = data
    indexed = (data[0][0], data[0][1], data[1][0], data[1][1])
    assert all(a is b for a, b in zip(indexed, (x_train, y_train, x_test, y_test), strict=True))
    copy = pickle.loads(pickle.dumps(data))
    assert isinstance(copy, datasets.Dataset)
    assert (copy.name, copy.class_names) == ("fashion-mnist", EXPECTED_CLASS_NAMES["fashion-mnist"])
    np.testing.assert_array_equal(copy[0][0], x_train)
    assert repr(data) == ("<Dataset 'fashion-mnist': 7 training and 4 test images of 784 uint8 "
                          "pixels, 10 classes>")


def test_class_names_need_no_files(server):
    for name, expected in EXPECTED_CLASS_NAMES.items():
        assert datasets.class_names(name) == expected
    assert datasets.class_names("kmnist")[1] == "ki"
    assert server.requests == [] and not cache_dir().exists()


def test_download_fetches_into_dest_with_a_progress_bar(tmp_path, publish, capsys):
    publish("kmnist", mirrors=("good",))

    folder = datasets.download("kmnist", tmp_path / "dest", progress=True)

    assert folder == tmp_path / "dest"
    assert listing(folder) == sorted(datasets.DATASETS["kmnist"].files)
    assert "\rtrain-images-idx3-ubyte.gz: [" in capsys.readouterr().err
    assert datasets.load("kmnist", path=folder, download=False).name == "kmnist"


def test_the_package_exposes_datasets():
    assert mn.datasets is datasets and "datasets" in mn.__all__
    assert datasets.NAMES == tuple(EXPECTED_CLASS_NAMES)
    assert datasets.DATASETS_ENV_VAR == "MNISTNET_DATASETS"


@pytest.mark.skipif(not REAL_MNIST, reason="set MNISTNET_DATA to a folder holding MNIST")
def test_real_mnist_loads_as_load_mnist_loads_it():
    data = datasets.load("mnist", REAL_MNIST, normalize=False)

    expected = load_mnist(REAL_MNIST, normalize=False)
    for got, want in zip((*data[0], *data[1]), (*expected[0], *expected[1]), strict=True):
        np.testing.assert_array_equal(got, want)
    assert data[0][0].shape == (60000, 784) and data[1][1].max() == 9


def test_the_real_table_is_well_formed():
    hex_lengths = {"md5": 32, "sha256": 64}
    for name, info in datasets.DATASETS.items():
        assert info.name == name
        assert info.class_names == EXPECTED_CLASS_NAMES[name]
        assert len(set(info.class_names)) == len(info.class_names), name
        assert len(set(info.stems)) == 4 and all("-idx" in stem for stem in info.stems), name
        assert info.folder and "/" not in info.folder, name
        assert info.mirrors, name
        for mirror in info.mirrors:
            assert mirror.startswith(("https://", "http://")) and mirror.endswith("/"), mirror
        assert info.files, name
        for file_name, checksum in info.files.items():
            assert file_name.endswith((".gz", ".zip")), file_name
            assert len(checksum.hexdigest) == hex_lengths[checksum.algorithm], file_name
            assert set(checksum.hexdigest) <= set(string.hexdigits.lower()), file_name
        if info.archive is None:
            assert set(info.files) == {f"{stem}.gz" for stem in info.stems}, name
        else:
            assert set(info.files) == {info.archive}, name
    emnist = [datasets.DATASETS[name] for name in EMNIST_SPLITS]
    assert {(info.folder, info.archive, info.transposed) for info in emnist} == {
        ("emnist", "gzip.zip", True)
    }
    assert datasets.DATASETS["emnist-letters"].first_label == 1
    assert datasets.DATASETS["qmnist"].label_column == 0
