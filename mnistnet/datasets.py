"""The MNIST family, built in: MNIST, Fashion-MNIST, KMNIST, EMNIST (four splits) and QMNIST.

    import mnistnet as mn
    data = mn.datasets.load("fashion-mnist")
    (x_train, y_train), (x_test, y_test) = data       # unpacks like mn.load_mnist()
    data.class_names                                   # ("T-shirt/top", "Trouser", ...)

Every dataset comes back the same way: images flattened to ``(n, 784)``, upright (as MNIST's),
float32 in [0, 1] or, with ``normalize=False``, uint8 (a quarter of the memory); labels uint8
``(n,)`` counting classes from 0, so that ``class_names[y]`` names a label.

**Where the files are looked for** (:func:`load`), in this order:

1. ``path=`` if given, and then only there: a folder holding that dataset's four files;
2. for MNIST only, ``$MNISTNET_DATA`` (as :func:`mnistnet.load_mnist` does);
3. ``$MNISTNET_DATASETS/<folder>``: ``MNISTNET_DATASETS`` names one folder holding a subfolder
   per dataset (``mnist``, ``fashion-mnist``, ``kmnist``, ``emnist`` shared by the four EMNIST
   splits, ``qmnist``; :attr:`DatasetInfo.folder`);
4. the per-user cache: ``<cache>/<folder>``, where ``<cache>`` is
   :func:`mnistnet.data.cache_dir` (MNIST keeps its files in ``<cache>`` itself, where
   ``load_mnist`` has always put them);
5. else, unless ``download=False``, they are downloaded into that cache (:func:`download`).

An environment folder that lacks some files is skipped with a warning. Each file may be raw or
gzip-compressed (``name`` or ``name.gz``).

**Downloads** come from each publisher's mirrors (and torchvision's where it lists another),
tried in order, each file verified against the checksum its publisher or torchvision publishes
before it is moved into place; a failed or corrupt download moves on to the next mirror, and
:class:`mnistnet.data.DownloadError` lists every mirror's failure. MNIST's files are checked by
sha256 (:data:`mnistnet.data.FILES`); for the others, their publishers and torchvision list md5
only, and that is what is checked (the comments on the table below say where each comes from).
EMNIST ships as one zip holding every split, NIST's ``gzip.zip``: its ``.gz`` files are
unpacked into the cache (all splits, so each later split loads without a download) and the zip
deleted.
"""

from __future__ import annotations

import difflib
import os
import shutil
import string
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType

import numpy as np

from mnistnet import data
from mnistnet.data import (
    DATA_ENV_VAR,
    Checksum,
    PathLike,
    _check_same_image_size,
    _check_split,
    _dataset_files,
    _download_files,
    _flatten_images,
    _locate_files,
    _Search,
    cache_dir,
    read_idx,
)

__all__ = [
    "DATASETS",
    "DATASETS_ENV_VAR",
    "NAMES",
    "Dataset",
    "DatasetInfo",
    "class_names",
    "download",
    "load",
    "load_test",
]

#: Environment variable naming a folder with one subfolder per dataset (DatasetInfo.folder).
DATASETS_ENV_VAR = "MNISTNET_DATASETS"


@dataclass(frozen=True)
class DatasetInfo:
    """One row of :data:`DATASETS`: where a dataset's files come from and how to read them."""

    name: str  # what load() takes: "fashion-mnist"
    title: str  # for messages: "Fashion-MNIST"
    folder: str  # its subfolder of the cache and of $MNISTNET_DATASETS
    stems: tuple[str, str, str, str]  # train images, train labels, test images, test labels
    class_names: tuple[str, ...]  # class_names[y] names label y (0-based)
    mirrors: tuple[str, ...]  # base URLs, tried in order
    files: Mapping[str, Checksum]  # what the mirrors serve, with its published checksum
    archive: str | None = None  # a served zip whose .gz files are unpacked (EMNIST)
    transposed: bool = False  # images stored column by column (EMNIST)
    first_label: int = 0  # the files' label of class 0 (EMNIST letters count from 1)
    label_column: int | None = None  # labels are rows; the class is this column (QMNIST)


_MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_DIGITS = tuple(string.digits)

# Published by Zalando in the Fashion-MNIST README ("Get the Data", MD5 column); torchvision's
# FashionMNIST lists the same md5s. The S3 site is the README's download link (and torchvision's
# mirror); the README also ships the files in the repository, under data/fashion.
_FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": Checksum("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train-labels-idx1-ubyte.gz": Checksum("md5", "25c81989df183df01b3e8a0aad5dffbe"),
    "t10k-images-idx3-ubyte.gz": Checksum("md5", "bef4ecab320f06d8554ea6380940ec79"),
    "t10k-labels-idx1-ubyte.gz": Checksum("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
}
_FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
_FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# From torchvision's KMNIST (the publisher, ROIS-CODH, lists no checksums). The mirror is the
# publisher's, the one its README links and torchvision uses.
_KMNIST_FILES = {
    "train-images-idx3-ubyte.gz": Checksum("md5", "bdb82020997e1d708af4cf47b453dcf7"),
    "train-labels-idx1-ubyte.gz": Checksum("md5", "e144d726b3acfaa3e44228e80efcd344"),
    "t10k-images-idx3-ubyte.gz": Checksum("md5", "5c965bf0a639b31b8f53240b1b52f4d7"),
    "t10k-labels-idx1-ubyte.gz": Checksum("md5", "7320c461ea6c1c855c0b718fb2a4b134"),
}
_KMNIST_MIRRORS = ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",)
# The romanised hiragana, as torchvision names them; the publisher's kmnist_classmap.csv
# lists the characters: お き す つ な は ま や れ を.
_KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")

# From torchvision's EMNIST (NIST publishes no checksum). NIST's current link first; the second
# is the older one torchvision still lists.
_EMNIST_FILES = {"gzip.zip": Checksum("md5", "58c8d27c78d21e728a6bc7b3cc06412e")}
_EMNIST_MIRRORS = (
    "https://biometrics.nist.gov/cs_links/EMNIST/",
    "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/",
)
# As EMNIST's mapping files (emnist-<split>-mapping.txt) and torchvision list them. Balanced
# merges the 15 lowercase letters that look like their capitals (c, i, j, k, l, m, o, p, s, u,
# v, w, x, y, z); letters merges every letter's two cases into one class (named in lowercase, as
# torchvision does), labelled 1-26 in the files.
_EMNIST_BYCLASS_CLASSES = _DIGITS + tuple(string.ascii_uppercase + string.ascii_lowercase)
_EMNIST_BALANCED_CLASSES = _DIGITS + tuple(string.ascii_uppercase + "abdefghnqrt")
_EMNIST_LETTERS_CLASSES = tuple(string.ascii_lowercase)

# From torchvision's QMNIST (the publisher, facebookresearch/qmnist, lists no checksums). The
# files are served from the publisher's repository, as torchvision fetches them.
_QMNIST_FILES = {
    "qmnist-train-images-idx3-ubyte.gz": Checksum("md5", "ed72d4157d28c017586c42bc6afe6370"),
    "qmnist-train-labels-idx2-int.gz": Checksum("md5", "0058f8dd561b90ffdd0f734c6a30e5e4"),
    "qmnist-test-images-idx3-ubyte.gz": Checksum("md5", "1394631089c404de565df7b7aeaf9412"),
    "qmnist-test-labels-idx2-int.gz": Checksum("md5", "5b5b05890a5e13444e108efe57b788aa"),
}
_QMNIST_MIRRORS = ("https://raw.githubusercontent.com/facebookresearch/qmnist/master/",)


def _emnist(split: str, title: str, classes: tuple[str, ...], first_label: int = 0) -> DatasetInfo:
    """One EMNIST split: the four splits share NIST's zip, unpacked in one folder."""
    prefix = f"emnist-{split}"
    return DatasetInfo(
        name=f"emnist-{split}",
        title=title,
        folder="emnist",
        stems=(
            f"{prefix}-train-images-idx3-ubyte",
            f"{prefix}-train-labels-idx1-ubyte",
            f"{prefix}-test-images-idx3-ubyte",
            f"{prefix}-test-labels-idx1-ubyte",
        ),
        class_names=classes,
        mirrors=_EMNIST_MIRRORS,
        files=MappingProxyType(_EMNIST_FILES),
        archive="gzip.zip",
        transposed=True,
        first_label=first_label,
    )


#: Every dataset :func:`load` knows, by name: its files, mirrors, checksums and class names.
DATASETS: Mapping[str, DatasetInfo] = MappingProxyType(
    {
        # MNIST's mirrors and the sha256 of their files are mnistnet.data's (MIRRORS, FILES).
        "mnist": DatasetInfo(
            name="mnist",
            title="MNIST",
            folder="mnist",
            stems=_MNIST_STEMS,
            class_names=_DIGITS,
            mirrors=data.MIRRORS,
            files=MappingProxyType({n: Checksum("sha256", h) for n, h in data.FILES.items()}),
        ),
        "fashion-mnist": DatasetInfo(
            name="fashion-mnist",
            title="Fashion-MNIST",
            folder="fashion-mnist",
            stems=_MNIST_STEMS,
            class_names=_FASHION_MNIST_CLASSES,
            mirrors=_FASHION_MNIST_MIRRORS,
            files=MappingProxyType(_FASHION_MNIST_FILES),
        ),
        "kmnist": DatasetInfo(
            name="kmnist",
            title="KMNIST",
            folder="kmnist",
            stems=_MNIST_STEMS,
            class_names=_KMNIST_CLASSES,
            mirrors=_KMNIST_MIRRORS,
            files=MappingProxyType(_KMNIST_FILES),
        ),
        "emnist-digits": _emnist("digits", "EMNIST Digits", _DIGITS),
        "emnist-letters": _emnist(
            "letters", "EMNIST Letters", _EMNIST_LETTERS_CLASSES, first_label=1
        ),
        "emnist-balanced": _emnist("balanced", "EMNIST Balanced", _EMNIST_BALANCED_CLASSES),
        "emnist-byclass": _emnist("byclass", "EMNIST ByClass", _EMNIST_BYCLASS_CLASSES),
        "qmnist": DatasetInfo(
            name="qmnist",
            title="QMNIST",
            folder="qmnist",
            stems=(
                "qmnist-train-images-idx3-ubyte",
                "qmnist-train-labels-idx2-int",
                "qmnist-test-images-idx3-ubyte",
                "qmnist-test-labels-idx2-int",
            ),
            class_names=_DIGITS,
            mirrors=_QMNIST_MIRRORS,
            files=MappingProxyType(_QMNIST_FILES),
            label_column=0,  # the README's "Character class" column of the extended labels
        ),
    }
)

#: The names :func:`load` takes.
NAMES: tuple[str, ...] = tuple(DATASETS)

# Images transposed per block: ByClass's 698k training images are 547 MB, which a transposed
# copy would double; a block of 4096 copies 3 MB.
_TRANSPOSE_BLOCK = 4096


# --------------------------------------------------------------------------- the result


class Dataset(tuple):
    """What :func:`load` returns: a tuple ``((x_train, y_train), (x_test, y_test))`` that
    unpacks (and indexes) exactly like :func:`mnistnet.load_mnist`'s result, and also carries
    the dataset's ``name`` and its ``class_names`` (``class_names[y]`` names label ``y``)."""

    name: str
    class_names: tuple[str, ...]

    def __new__(
        cls,
        train: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        *,
        name: str,
        class_names: tuple[str, ...],
    ) -> Dataset:
        dataset = super().__new__(cls, (tuple(train), tuple(test)))
        dataset.name = name
        dataset.class_names = tuple(class_names)
        return dataset

    def __getnewargs_ex__(self) -> tuple[tuple, dict]:
        # A tuple subclass pickles through __new__: hand it the keywords too.
        return (self[0], self[1]), {"name": self.name, "class_names": self.class_names}

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x_train, y_train)``."""
        return self[0]

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x_test, y_test)``."""
        return self[1]

    def __repr__(self) -> str:
        (x_train, _), (x_test, _) = self
        return (
            f"<Dataset {self.name!r}: {x_train.shape[0]} training and {x_test.shape[0]} test "
            f"images of {x_train.shape[1]} {x_train.dtype} pixels, "
            f"{len(self.class_names)} classes>"
        )


# --------------------------------------------------------------------------- public API


def load(
    name: str, path: PathLike | None = None, *, normalize: bool = True, download: bool = True
) -> Dataset:
    """Load one dataset of the MNIST family by name (one of :data:`NAMES`).

    Args:
        name: "mnist", "fashion-mnist", "kmnist", "emnist-digits", "emnist-letters",
            "emnist-balanced", "emnist-byclass" or "qmnist".
        path: a folder holding the dataset's four files (raw or ``.gz``, named as in
            :attr:`DatasetInfo.stems`); the only place looked in when given. Otherwise the
            files are looked for as the module documents (``$MNISTNET_DATASETS/<folder>``,
            the cache) and downloaded into the cache when missing.
        normalize: float32 pixels in [0, 1] (divided by 255) if true, else uint8 as stored
            (a quarter of the memory: EMNIST ByClass's training images are 547 MB as uint8,
            2.2 GB as float32).
        download: download missing files; if false, they must be found.

    Returns:
        A :class:`Dataset`, which unpacks as ``(x_train, y_train), (x_test, y_test)`` and
        carries ``.class_names``. x is C-contiguous ``(n, rows * cols)``; y is uint8 ``(n,)``
        holding 0-based class indices. Images are upright, as MNIST's: EMNIST stores them
        transposed, and they come back transposed back. EMNIST Letters' labels, 1-26 in its
        files, come back as 0-25 (``class_names`` "a".."z"; each class holds both cases).
        QMNIST's test split holds all 60,000 test images (the first 10,000 are its
        reconstruction of MNIST's test set), and its labels are the digit class (column 0 of
        its extended labels).

    Raises:
        ValueError: an unknown name (the message lists the known ones); a malformed file, or
            files that do not fit together or hold labels outside the dataset's classes.
        FileNotFoundError: files missing from ``path`` (named), or found nowhere with
            ``download=False``.
        mnistnet.data.DownloadError: every mirror failed for some file.
    """
    info = _info(name)

    def fetch() -> Path:
        return _download(info)

    files = _locate_files(_search(info), path, fetch if download else None)
    train_images, train_labels, test_images, test_labels = (files[stem] for stem in info.stems)
    # One split at a time, so the raw training images are gone before the test split is read.
    x_train, y_train, train_size = _load_split(info, train_images, train_labels, normalize)
    x_test, y_test, test_size = _load_split(info, test_images, test_labels, normalize)
    _check_same_image_size(train_size, test_size, train_images, test_images)
    return Dataset(
        (x_train, y_train), (x_test, y_test), name=info.name, class_names=info.class_names
    )


def load_test(
    name: str, path: PathLike | None = None, *, normalize: bool = True, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The test split only, ``(x_test, y_test)``, as :func:`load` returns it, without reading
    the training images (EMNIST ByClass's are 547 MB): a ``path`` folder needs only the two
    test files. Looked for in the same places as :func:`load`; a download fetches all four.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or a malformed file.
        FileNotFoundError: the test files missing from ``path`` (named), or found nowhere
            with ``download=False``.
        mnistnet.data.DownloadError: every mirror failed for some file.
    """
    info = _info(name)
    images_stem, labels_stem = info.stems[2:]

    def fetch() -> Path:
        return _download(info)

    search = _search(info)._replace(stems=(images_stem, labels_stem))
    files = _locate_files(search, path, fetch if download else None)
    x, y, _ = _load_split(info, files[images_stem], files[labels_stem], normalize)
    return x, y


def class_names(name: str) -> tuple[str, ...]:
    """The class names of dataset ``name``, without loading it: ``class_names(name)[y]``
    names label ``y`` as :func:`load` returns it (e.g. ``class_names("kmnist")[1] == "ki"``).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    return _info(name).class_names


def download(
    name: str,
    dest: PathLike | None = None,
    *,
    timeout: float = 30,
    progress: bool | None = None,
) -> Path:
    """Download dataset ``name``'s files into ``dest`` (default: its cache folder, where
    :func:`load` looks) and return that folder.

    Each file is fetched from the dataset's mirrors in turn, streamed into a temporary file and
    checked against its published checksum before it is moved into place; a failure or a
    mismatch moves on to the next mirror. Files already there with the right checksum are kept.
    EMNIST's zip is unpacked (every ``.gz`` file in it, all splits) and then deleted; a folder
    that already holds the split's files downloads nothing. ``timeout`` (seconds) applies to
    connecting and to every read; ``progress`` shows a progress bar on stderr (``None``: when
    stderr is a terminal).

    Raises:
        ValueError: an unknown name.
        mnistnet.data.DownloadError: every mirror failed for some file (the message lists
            each mirror's failure and how to install the files by hand).
    """
    return _download(_info(name), dest, timeout, progress)


def _download(
    info: DatasetInfo,
    dest: PathLike | None = None,
    timeout: float = 30,
    progress: bool | None = None,
) -> Path:
    folder = Path(dest) if dest is not None else _cache_folder(info)
    if info.archive is not None and not _dataset_files(folder, info.stems)[1]:
        return folder  # unpacked before (the archive was deleted then)
    _download_files(folder, info.mirrors, info.files, timeout, progress, _install_hint(info))
    if info.archive is not None:
        _unpack_gz_members(folder / info.archive, folder)
    return folder


# --------------------------------------------------------------------------- finding files


def _info(name: str) -> DatasetInfo:
    """The table's row for ``name``, or a ValueError listing the known names."""
    table = DATASETS
    if isinstance(name, str) and name in table:
        return table[name]
    close = difflib.get_close_matches(str(name), list(table), n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown dataset {name!r}{suggestion}; known datasets: {', '.join(table)}"
    )


def _cache_folder(info: DatasetInfo) -> Path:
    # MNIST stays where load_mnist has always cached it, so both find the same files.
    return cache_dir() if info.name == "mnist" else cache_dir() / info.folder


def _env_folders(info: DatasetInfo) -> list[tuple[str, str]]:
    """The folders the environment names for this dataset, as (label, folder), in order."""
    folders = []
    mnist_folder = os.environ.get(DATA_ENV_VAR)
    if info.name == "mnist" and mnist_folder:
        folders.append((f"${DATA_ENV_VAR}", mnist_folder))
    root = os.environ.get(DATASETS_ENV_VAR)
    if root:
        folders.append((f"${DATASETS_ENV_VAR}/{info.folder}", os.path.join(root, info.folder)))
    return folders


def _search(info: DatasetInfo) -> _Search:
    return _Search(
        title=info.title,
        stems=info.stems,
        env_folders=_env_folders(info),
        cache=_cache_folder(info),
        hint=_install_hint(info),
        folder_hint=_unzip_hint(info),
    )


def _unzip_hint(info: DatasetInfo) -> str:
    """For a folder that lacks an archive's files: where they are in the archive."""
    if info.archive is None:
        return ""
    return f"NIST's {info.archive} holds them in its gzip/ folder: unzip it and pass that folder"


def _install_hint(info: DatasetInfo) -> str:
    cache = _cache_folder(info)
    if info.archive is not None:
        archive = (
            f" (they are in the gzip/ folder of NIST's {info.archive}; or put {info.archive} "
            f"itself in {cache}, where it is verified and unpacked)"
        )
    else:
        archive = ""
    return (
        f"To install the files by hand, put {', '.join(info.stems)} (raw or .gz) in {cache}"
        f"{archive}, or in DIR/{info.folder} and set {DATASETS_ENV_VAR}=DIR, or pass "
        f"mn.datasets.load({info.name!r}, path=FOLDER)."
    )


def _unpack_gz_members(archive: Path, folder: Path) -> None:
    """Copy every ``.gz`` member of the zip ``archive`` into ``folder``, flattened (NIST's zip
    keeps them in ``gzip/``), each through a temporary file; then delete the archive."""
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.infolist():
            # Only the base name is used, so no member can write outside the folder.
            member_name = PurePosixPath(member.filename).name
            if not member.is_dir() and member_name.endswith(".gz"):
                _extract_atomically(zipped, member, folder / member_name)
    archive.unlink()


def _extract_atomically(zipped: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path) -> None:
    handle = tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False
    )
    temp_path = Path(handle.name)
    try:
        with handle, zipped.open(member) as source:
            shutil.copyfileobj(source, handle)
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, target)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- reading


def _load_split(
    info: DatasetInfo, images_path: Path, labels_path: Path, normalize: bool
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """One split as load returns it (x, y), and its image size (rows, cols)."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if info.label_column is not None:
        labels = _class_column(labels, info.label_column, labels_path)
    _check_split(images, labels, images_path, labels_path)
    _make_zero_based(labels, info, labels_path)
    if info.transposed:
        _transpose_in_place(images, images_path)
    return _flatten_images(images, normalize), labels, images.shape[1:]


def _class_column(extended: np.ndarray, column: int, path: Path) -> np.ndarray:
    """The class column of QMNIST's extended labels (n rows of 8 int32), as uint8."""
    if extended.ndim != 2 or extended.dtype != np.int32 or extended.shape[1] <= column:
        raise ValueError(
            f"{path}: expected QMNIST's extended labels, 2-D int32 with {column + 1} columns or "
            f"more, got {extended.ndim}-D {extended.dtype} of shape {extended.shape}"
        )
    classes = extended[:, column]
    # Checked before the cast, which would wrap 256 to class 0.
    outside = (classes < 0) | (classes > 255)
    if outside.any():
        raise ValueError(
            f"{path}: label {classes[outside][0]} in column {column} is outside 0..255, "
            f"so it is no class (a file of another dataset?)"
        )
    return classes.astype(np.uint8)


def _make_zero_based(labels: np.ndarray, info: DatasetInfo, path: Path) -> None:
    """Check the labels name the dataset's classes; shift them in place to start at 0."""
    first, count = info.first_label, len(info.class_names)
    low, high = int(labels.min()), int(labels.max())
    if low < first or high >= first + count:
        raise ValueError(
            f"{path}: label {low if low < first else high} is outside {first}..{first + count - 1}"
            f", the labels of {info.title}'s {count} classes (a file of another dataset?)"
        )
    if first:
        labels -= np.uint8(first)


def _transpose_in_place(images: np.ndarray, path: Path) -> None:
    """Turn images stored column by column (EMNIST's) upright, block by block."""
    _, rows, cols = images.shape
    if rows != cols:
        raise ValueError(f"{path}: expected square images (EMNIST's are 28x28), got {rows}x{cols}")
    for start in range(0, images.shape[0], _TRANSPOSE_BLOCK):
        block = images[start : start + _TRANSPOSE_BLOCK]
        block[...] = block.transpose(0, 2, 1).copy()
