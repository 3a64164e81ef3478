"""Shared fixtures and reporting for the pytest-benchmark suites in bench/.

Run with ``pytest bench/ --benchmark-only`` (see bench/README.md). Every benchmark records
``extra_info["variant"]`` ("fast.…" for the compiled backend, "np.…"/"reference.…" for
NumPy) so that, besides pytest-benchmark's own tables, the end of the run prints one line per
group with each compiled variant's speed relative to the NumPy one measured in the same run.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import mnistnet
from mnistnet import fast

OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _blas_lines() -> list[str]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["numpy BLAS: unknown (pip install threadpoolctl to see its kernel)"]
    return [f"numpy BLAS: {i.get('internal_api')} {i.get('version')}, "
            f"{i.get('architecture')} kernel, {i.get('num_threads')} threads"
            for i in threadpool_info() if i.get("user_api") == "blas"]


def _environment_lines() -> list[str]:
    lines = [f"mnistnet {mnistnet.__version__}: simd {fast.simd_path()}, "
             f"{fast.get_num_threads()} thread(s), OpenMP "
             f"{'on' if fast.openmp_enabled() else 'off'}; numpy {np.__version__}"]
    lines += _blas_lines()
    forced = [f"{k}={os.environ[k]}" for k in OPENBLAS_ENV if k in os.environ]
    if forced:
        lines.append(f"WARNING: {' '.join(forced)} is set and slows numpy's OpenBLAS; for a "
                     "fair baseline run under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`")
    try:
        load, cpus = os.getloadavg()[0], os.cpu_count() or 1
        lines.append(f"load average {load:.1f} on {cpus} CPUs"
                     + (" (busy: compare ratios, not seconds)" if load > cpus else ""))
    except (AttributeError, OSError):
        pass
    return lines


def pytest_report_header(config):
    return _environment_lines()


def pytest_benchmark_update_machine_info(config, machine_info):
    """Stored with --benchmark-autosave/--benchmark-json: which kernels ran."""
    machine_info["mnistnet"] = {
        "version": mnistnet.__version__, "simd_path": fast.simd_path(),
        "num_threads": fast.get_num_threads(), "openmp": bool(fast.openmp_enabled()),
        "numpy": np.__version__,
        "openblas_env": {k: os.environ[k] for k in OPENBLAS_ENV if k in os.environ},
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _is_numpy_variant(variant: str) -> bool:
    return variant.startswith(("np.", "reference"))


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line per group: each variant's min time and, for compiled variants, NumPy-min /
    variant-min against the named NumPy variant (> 1: the compiled one is faster)."""
    session = getattr(config, "_benchmarksession", None)
    benches = [b for b in getattr(session, "benchmarks", []) if getattr(b, "stats", None)]
    if not benches:
        return
    groups: dict[str, list] = {}
    for b in benches:
        groups.setdefault(b.group or "(no group)", []).append(b)
    terminalreporter.section("ratios within each group (min time; x = NumPy twin / compiled)")
    for group in sorted(groups):
        rows = {b.extra_info.get("variant", b.name): b.stats.min for b in groups[group]}
        parts = []
        for variant, t in sorted(rows.items(), key=lambda r: (not r[0].startswith("fast"), r[0])):
            text = f"{variant} {_format_seconds(t)}"
            base = _baseline(variant, rows)
            if base is not None:
                text += f" ({rows[base] / t:.2f}x {base})"
            parts.append(text)
        terminalreporter.write_line(f"{group}: " + ", ".join(parts))


def _baseline(variant: str, rows: dict) -> str | None:
    """The NumPy variant a compiled one is compared with: its twin "reference.<op>" (or plain
    "reference"), else "np.matmul", else the first NumPy variant of the group."""
    if _is_numpy_variant(variant):
        return None
    op = variant.partition(".")[2]
    for name in (f"reference.{op}" if op else "reference", "np.matmul"):
        if name in rows:
            return name
    return next((v for v in rows if _is_numpy_variant(v)), None)


def _format_seconds(t: float) -> str:
    if t >= 1:
        return f"{t:.3f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.2f} us"


@pytest.fixture(scope="session")
def mnist():
    """mnistnet.load_mnist() from $MNISTNET_DATA; skips when it is unset."""
    path = os.environ.get("MNISTNET_DATA")
    if not path:
        pytest.skip("set MNISTNET_DATA to a folder holding the four MNIST files")
    return mnistnet.load_mnist(path)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
