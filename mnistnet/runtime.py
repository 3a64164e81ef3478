"""The compiled core's run-time settings: the SIMD path, the threads, where the C API's
header and library are, and show_config (re-exported by the package as mn.show_config, ...).

Environment: MNISTNET_SIMD=avx512|avx2|sse2|neon|scalar forces a GEMM path (an error if this
CPU lacks it); MNISTNET_NUM_THREADS=n sets the kernels' thread count, as set_num_threads(n)
does (default: OpenMP's, see get_num_threads).
"""

from __future__ import annotations

import os as _os
from typing import Any, Literal, TextIO, overload

from mnistnet import fast
from mnistnet._version import __version__

__all__ = ["get_include", "get_library_dir", "get_num_threads", "set_num_threads",
           "show_config", "simd_path"]

simd_path = fast.simd_path


def set_num_threads(n: int | None) -> None:
    """Threads the compiled kernels use: n >= 1 fixes the count (as MNISTNET_NUM_THREADS=n
    does), 0 or None gives it back to OpenMP's setting (see get_num_threads). A count above
    the cores this process may run on is clamped to them, with a RuntimeWarning. Results are
    bit-identical whatever the count (work is split over outputs, never over sums)."""
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 2**31 - 1:
        raise ValueError(f"number of threads must be an integer >= 0 (0: OpenMP's setting, "
                         f"all cores by default), got {n!r}")
    fast.set_num_threads(n)
    clamped = _clamp_message(n, f"set_num_threads({n})")
    if clamped:
        import warnings

        warnings.warn(clamped, RuntimeWarning, stacklevel=2)


def get_num_threads() -> int:
    """Threads the compiled kernels called from this thread would use now, in this order:

    1. the count set by set_num_threads(n) or MNISTNET_NUM_THREADS=n (n >= 1), if any;
    2. else OpenMP's setting for the calling thread, read at each call: a
       ``threadpoolctl.threadpool_limits(k)`` in effect (the "openmp" API, which also reaches
       the libgomp a wheel vendors), else OMP_NUM_THREADS, else all cores;

    clamped to [1, the cores this process may run on (its CPU affinity)]. Always 1 in a build
    without OpenMP (see show_config()). OpenMP keeps its setting per thread: a
    threadpool_limits reaches the thread that entered it (and a new thread starts from
    OMP_NUM_THREADS), while set_num_threads is process-wide. A model sizes its training
    workspace by this count when fit starts."""
    return fast.get_num_threads()


def _clamp_message(requested: int, source: str) -> str | None:
    """What to warn about when fewer threads than `requested` will run, for want of cores
    (None: nothing)."""
    used = fast.get_num_threads()
    if not fast.openmp_enabled() or requested <= used:
        return None
    cores = fast.available_cores()
    return (f"{source}: this process may run on {cores} core{'' if cores == 1 else 's'}, "
            f"so mnistnet uses {used} thread{'' if used == 1 else 's'}")


@overload
def show_config(mode: Literal["stdout"] = "stdout", file: TextIO | None = None) -> None: ...


@overload
def show_config(mode: Literal["dicts"], file: TextIO | None = None) -> dict[str, Any]: ...


def show_config(mode: str = "stdout", file: TextIO | None = None) -> dict[str, Any] | None:
    """Print the version, the compiled SIMD path, and the OpenMP and thread settings, and
    return None; with mode="dicts", return them as a dict instead (numpy.show_config's
    modes).

    Args:
        mode: "stdout" (print to ``file``, default sys.stdout) or "dicts" (return
            {"version", "simd_path", "simd_available", "openmp", "num_threads"}).
        file: where to print (mode "stdout").
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"mode must be 'stdout' or 'dicts' (as numpy.show_config), got "
                         f"{mode!r}")
    info = {
        "version": __version__,
        "simd_path": fast.simd_path(),
        "simd_available": [p for p in fast.SIMD_PATHS if fast.simd_supported(p)],
        "openmp": fast.openmp_enabled(),
        "num_threads": fast.get_num_threads(),
    }
    if mode == "dicts":
        return info
    import sys

    out = file if file is not None else sys.stdout
    print(f"mnistnet {info['version']}", file=out)
    print(f"  simd path:  {info['simd_path']} (available: {', '.join(info['simd_available'])})",
          file=out)
    print(f"  openmp:     {'on' if info['openmp'] else 'off'}", file=out)
    print(f"  threads:    {info['num_threads']}", file=out)
    return None


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

    if _running_the_cli():
        print(f"mnistnet: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    return ImportError(message)


def _running_the_cli() -> bool:
    """Whether this process is the ``mnistnet`` command (or ``python -m mnistnet``)."""
    import sys

    prog = _os.path.basename(sys.argv[0]) if sys.argv else ""
    return prog in ("mnistnet", "mnistnet.exe") or list(sys.orig_argv[1:3]) == ["-m",
                                                                                 "mnistnet"]


def _environment_warning(message: str) -> None:
    """A RuntimeWarning for the library; one line ``mnistnet: warning: ...`` on stderr for the
    command line (see _environment_error)."""
    import sys
    import warnings

    if _running_the_cli():
        print(f"mnistnet: warning: {message}", file=sys.stderr, flush=True)
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


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
                                     f"(0: OpenMP's setting, all cores by default), got "
                                     f"{threads!r}")
        fast.set_num_threads(int(threads))
        clamped = _clamp_message(int(threads), f"MNISTNET_NUM_THREADS={threads}")
        if clamped:
            _environment_warning(clamped)
