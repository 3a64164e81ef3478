"""The compiled core's run-time settings: the SIMD path, the threads, where the C API's
header and library are, and show_config (re-exported by the package as mn.show_config, ...).

Environment: MNISTNET_SIMD=avx512|avx2|sse2|neon|scalar forces a GEMM path (an error if this
CPU lacks it); MNISTNET_NUM_THREADS=n sets the kernels' thread count (default: all cores).
"""

from __future__ import annotations

import os as _os

from mnistnet import fast
from mnistnet._version import __version__

__all__ = ["get_include", "get_library_dir", "get_num_threads", "set_num_threads",
           "show_config", "simd_path"]

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


def configure_from_environment() -> None:
    """Apply MNISTNET_SIMD and MNISTNET_NUM_THREADS (the package does at import)."""
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
