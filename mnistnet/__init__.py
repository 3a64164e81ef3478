"""mnistnet: train and run small neural networks (dense and convolutional) on MNIST-style
images, fast.

    import mnistnet as mn
    (x_train, y_train), (x_test, y_test) = mn.load_mnist()
    model = mn.preset("cross-entropy")
    model.fit(x_train, y_train, epochs=30, validation_data=(x_test, y_test))

Environment: MNISTNET_SIMD=avx512|avx2|sse2|neon|scalar forces a GEMM path (an error if this
CPU lacks it); MNISTNET_NUM_THREADS=n sets the kernels' thread count (default: all cores).
Importing mnistnet sets GOMP_SPINCOUNT=10000 and KMP_BLOCKTIME=1 unless they are set.
"""

import os as _os

from mnistnet._version import __version__

# Idle OpenMP threads spin before they sleep: libgomp 300,000 times, libomp for 200 ms. On a
# busy machine the spinning steals the cores the work needs and a batch-32 step slows down
# 5-10x; a short spin still keeps the threads awake between the GEMMs of one step. Only
# effective if no OpenMP runtime is loaded yet; your own settings win.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")
_os.environ.setdefault("KMP_BLOCKTIME", "1")

try:
    from mnistnet import fast
except ImportError:  # the source folder without its compiled extensions
    from mnistnet._source_tree import missing_extensions

    raise missing_extensions() from None
from mnistnet import callbacks, reference, regularizers, schedules
from mnistnet.data import load_mnist
from mnistnet.int8 import QuantizedModel, quantize
from mnistnet.layers import (
    Activation,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    RandomTranslation,
)
from mnistnet.model import History, Model, preset
from mnistnet.optimizers import SGD, Adam, AdamW, RMSprop

__all__ = [
    "SGD",
    "Activation",
    "Adam",
    "AdamW",
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "History",
    "MaxPool2D",
    "Model",
    "QuantizedModel",
    "RMSprop",
    "RandomTranslation",
    "__version__",
    "callbacks",
    "fast",
    "get_include",
    "get_library_dir",
    "get_num_threads",
    "load_mnist",
    "preset",
    "quantize",
    "reference",
    "regularizers",
    "schedules",
    "set_num_threads",
    "show_config",
    "simd_path",
]

simd_path = fast.simd_path


def set_num_threads(n: int | None) -> None:
    """Threads the compiled kernels use; None or 0 means all cores. Results are
    bit-identical whatever the count (work is split over outputs, never over sums)."""
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 2**31 - 1:
        raise ValueError(f"number of threads must be an integer >= 0 (0: all cores), got {n!r}")
    fast.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the compiled kernels use."""
    return fast.get_num_threads()


def show_config(file=None) -> dict:
    """Print (and return) the version, the compiled code path, and OpenMP/thread settings."""
    import sys

    info = {
        "version": __version__,
        "simd_path": fast.simd_path(),
        "simd_available": [p for p in fast.SIMD_PATHS if fast.simd_supported(p)],
        "openmp": fast.openmp_enabled(),
        "num_threads": fast.get_num_threads(),
    }
    out = file if file is not None else sys.stdout
    print(f"mnistnet {info['version']}", file=out)
    print(f"  simd path:  {info['simd_path']} (available: {', '.join(info['simd_available'])})",
          file=out)
    print(f"  openmp:     {'on' if info['openmp'] else 'off'}", file=out)
    print(f"  threads:    {info['num_threads']}", file=out)
    return info


def get_include() -> str:
    """Folder holding mn_kernels.h, the C API of the compiled kernels: pass it to a C compiler
    as -I (like numpy.get_include()). Cython needs no path for `from mnistnet._kernels cimport
    ...`: the .pxd files are inside the installed package, which Cython finds on sys.path."""
    return _os.path.join(_os.path.dirname(__file__), "include")


def get_library_dir() -> str:
    """Folder holding the C kernels as a static library (libmn_kernels.a; mn_kernels.lib with
    MSVC) for C programs to link, with -fopenmp when show_config() reports OpenMP."""
    return _os.path.join(_os.path.dirname(__file__), "lib")


def _environment_error(message: str) -> ImportError:
    """An ImportError for the library; for the command line (`mnistnet ...` or
    `python -m mnistnet ...`, which import this package before cli.main runs) the usual
    one-line error and exit code 2."""
    import sys

    prog = _os.path.basename(sys.argv[0]) if sys.argv else ""
    if prog in ("mnistnet", "mnistnet.exe") or list(sys.orig_argv[1:3]) == ["-m", "mnistnet"]:
        print(f"mnistnet: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    return ImportError(message)


def _configure_from_environment() -> None:
    simd = _os.environ.get("MNISTNET_SIMD", "").strip()
    if simd:
        try:
            fast.select_simd(simd)
        except ValueError as exc:
            raise _environment_error(f"MNISTNET_SIMD={simd}: {exc}") from None
    threads = _os.environ.get("MNISTNET_NUM_THREADS", "").strip()
    if threads:
        if not (threads.isascii() and threads.isdigit()) or int(threads) > 2**31 - 1:
            raise _environment_error("MNISTNET_NUM_THREADS must be a whole number of threads "
                                     f"(0: all cores), got {threads!r}")
        fast.set_num_threads(int(threads))


_configure_from_environment()
