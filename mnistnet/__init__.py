"""mnistnet: train and run small dense neural networks on MNIST-style images, fast.

    import mnistnet as mn
    (x_train, y_train), (x_test, y_test) = mn.load_mnist()
    model = mn.preset("cross-entropy")
    model.fit(x_train, y_train, epochs=30, validation_data=(x_test, y_test))

Environment: MNISTNET_SIMD=avx512|avx2|sse2|neon|scalar forces a GEMM path (an error if this
CPU lacks it); MNISTNET_NUM_THREADS=n sets the kernels' thread count (default: all cores).
"""

import os as _os

from mnistnet._version import __version__

try:
    from mnistnet import fast
except ImportError as _exc:  # the source folder without its compiled extensions
    raise ImportError(
        f"mnistnet's compiled extensions are missing next to {__file__} ({_exc}). If this is "
        "the source tree, install it (pip install .) and run from another folder, or build in "
        "place (python setup.py build_ext --inplace)."
    ) from None
from mnistnet import reference
from mnistnet.data import load_mnist
from mnistnet.model import SGD, Dense, History, Model, preset

__all__ = [
    "SGD", "Dense", "History", "Model", "__version__", "fast", "get_num_threads",
    "load_mnist", "preset", "reference", "set_num_threads", "show_config", "simd_path",
]

simd_path = fast.simd_path


def set_num_threads(n: int | None) -> None:
    """Threads the compiled kernels use; None or 0 means all cores. Results are
    bit-identical whatever the count (work is split over outputs, never over sums)."""
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
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


def _configure_from_environment() -> None:
    simd = _os.environ.get("MNISTNET_SIMD", "").strip()
    if simd:
        try:
            fast.select_simd(simd)
        except ValueError as exc:
            raise ImportError(f"MNISTNET_SIMD={simd}: {exc}") from None
    threads = _os.environ.get("MNISTNET_NUM_THREADS", "").strip()
    if threads:
        if not threads.isdigit():
            raise ImportError(f"MNISTNET_NUM_THREADS must be a whole number, got {threads!r}")
        fast.set_num_threads(int(threads))


_configure_from_environment()
