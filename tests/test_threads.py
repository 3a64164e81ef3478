"""Thread counts as the ecosystem sets them (issues 19 item 1, 20 item 8, 21): huge counts are
clamped to the cores (no crash, no huge workspace), OMP_NUM_THREADS and threadpoolctl's limits
are followed when mnistnet's own setting is not given, and that setting wins when it is.

Each process-wide case runs in a fresh interpreter: OpenMP reads OMP_NUM_THREADS once, and
its thread pool, once started, stays."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import mnistnet as mn
from mnistnet import fast

CORES = fast.available_cores()
needs_openmp = pytest.mark.skipif(not fast.openmp_enabled(), reason="built without OpenMP")
needs_two_cores = pytest.mark.skipif(CORES < 2, reason="needs 2 cores")


def _environment(**settings: str | None) -> dict[str, str]:
    """This process's environment without the thread settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MNISTNET_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update({k: v for k, v in settings.items() if v is not None})
    return env


def _python(code: str, tmp_path, **settings: str | None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                          env=_environment(**settings), capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def restore_threads():
    yield
    mn.set_num_threads(int(os.environ.get("MNISTNET_NUM_THREADS", "0") or 0))


# A tiny fit and the kernel that crashed (issue 19: SIGSEGV in mn_sgd_update after
# set_num_threads(100_000); a 188 GiB workspace after set_num_threads(10**6)).
TINY_FIT = """
    import numpy as np
    rng = np.random.default_rng(0)
    params = rng.random(40_000, dtype=np.float32)
    mn.fast.sgd_update(params, rng.random(40_000, dtype=np.float32), 0.01)
    x = rng.random((64, 784), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    for preset in ("cross-entropy", "convnet"):
        mn.preset(preset, seed=0).fit(x, y, epochs=1, batch_size=16, verbose=0)
    print("threads", mn.get_num_threads(), "cores", mn.fast.available_cores())
"""


@needs_openmp
@pytest.mark.parametrize("count", [100_000, 10**6, 2**31 - 1])
def test_huge_set_num_threads_is_clamped_to_the_cores_without_crash(count, tmp_path):
    result = _python(f"""
        import warnings
        import mnistnet as mn
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mn.set_num_threads({count})
        print("warned", [str(w.message) for w in caught])
        {textwrap.indent(textwrap.dedent(TINY_FIT), "        ").strip()}
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"threads {CORES} cores {CORES}" in result.stdout
    assert f"set_num_threads({count}): this process may run on {CORES} core" in result.stdout


@needs_openmp
def test_huge_mnistnet_num_threads_is_clamped_with_a_warning(tmp_path):
    result = _python("import mnistnet as mn\n" + textwrap.dedent(TINY_FIT), tmp_path,
                     MNISTNET_NUM_THREADS="100000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"threads {CORES} cores {CORES}" in result.stdout
    assert (f"RuntimeWarning: MNISTNET_NUM_THREADS=100000: this process may run on {CORES} "
            "core") in result.stderr


@needs_openmp
def test_set_num_threads_above_the_cores_warns_and_reports_what_is_used(restore_threads):
    with pytest.warns(RuntimeWarning, match=rf"set_num_threads\(1000\): .* {CORES} core"):
        mn.set_num_threads(1000)
    assert mn.get_num_threads() == CORES
    mn.set_num_threads(CORES)  # no warning at the cores (pytest's -W error would show one)
    assert mn.get_num_threads() == CORES


@needs_openmp
def test_the_tests_own_limit_allows_teams_above_the_cores_up_to_64(restore_threads):
    from mnistnet import _kernels

    try:
        _kernels._set_thread_limit(CORES + 1)
        mn.set_num_threads(CORES + 1)  # no warning: that many will run
        assert mn.get_num_threads() == CORES + 1
        _kernels._set_thread_limit(10**6)
        with pytest.warns(RuntimeWarning, match="mnistnet uses 64 threads"):
            mn.set_num_threads(10**6)
        assert mn.get_num_threads() == 64
    finally:
        _kernels._set_thread_limit(0)
    assert mn.get_num_threads() == CORES


@needs_openmp
@pytest.mark.parametrize("how", ["python", "info"])
def test_omp_num_threads_is_followed_without_mnistnet_num_threads(how, tmp_path):
    if how == "info":
        result = subprocess.run([sys.executable, "-m", "mnistnet", "info"], cwd=tmp_path,
                                env=_environment(OMP_NUM_THREADS="1"), capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert "threads:    1\n" in result.stdout
    else:
        result = _python("import mnistnet as mn; print(mn.get_num_threads())", tmp_path,
                         OMP_NUM_THREADS="1")
        assert result.stdout.split() == ["1"], result.stderr


@needs_openmp
@needs_two_cores
def test_mnistnet_num_threads_wins_over_omp_num_threads(tmp_path):
    result = _python("import mnistnet as mn; print(mn.get_num_threads())", tmp_path,
                     OMP_NUM_THREADS="1", MNISTNET_NUM_THREADS="2")
    assert result.stdout.split() == ["2"], result.stderr


@needs_openmp
@needs_two_cores
def test_default_follows_threadpool_limits_at_call_time(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    mn.set_num_threads(0)
    assert mn.get_num_threads() == CORES
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert mn.get_num_threads() == 1
        mn.set_num_threads(2)  # an explicit count wins over the limit
        assert mn.get_num_threads() == 2
        mn.set_num_threads(None)
        assert mn.get_num_threads() == 1
    assert mn.get_num_threads() == CORES


# Counts the OS threads of the process (Linux: /proc/self/task) before and after a fit that
# runs on a team whenever two threads are allowed. OpenMP's pool threads, once started, stay,
# so a fit that ran a team leaves one more thread behind.
THREADPOOL_FIT = """
    import os, sys
    import numpy as np
    from threadpoolctl import threadpool_limits
    import mnistnet as mn
    from mnistnet import _kernels

    def os_threads():
        return len(os.listdir("/proc/self/task"))

    rng = np.random.default_rng(0)
    x = rng.random((4096, 784), dtype=np.float32)
    y = rng.integers(0, 10, 4096)
    _kernels._set_epoch_schedule("team")
    model = mn.preset("cross-entropy", seed=0)
    before = os_threads()
    limit = int(sys.argv[1])
    with threadpool_limits(limit if limit else None, user_api="openmp"):
        used = mn.get_num_threads()
        model.fit(x, y, epochs=1, batch_size=64, verbose=0, validation_data=(x, y))
    print(used, os_threads() - before, _kernels._last_team())
"""


@needs_openmp
@needs_two_cores
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
@pytest.mark.parametrize("limit", [1, 0], ids=["threadpool_limits(1)", "no limit"])
def test_threadpool_limits_makes_a_fit_run_on_one_thread(limit, tmp_path):
    pytest.importorskip("threadpoolctl")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(THREADPOOL_FIT),
                             str(limit)], cwd=tmp_path, env=_environment(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    used, new_threads, team = result.stdout.split()
    if limit == 1:
        assert (int(used), int(new_threads), team) == (1, 0, "none"), result.stdout
    else:  # the control: the same fit unlimited starts OpenMP's pool and runs a team
        assert int(used) == CORES and int(new_threads) == CORES - 1, result.stdout
        assert team != "none", result.stdout


def test_the_fma_peak_runs_on_at_most_the_cores_and_refuses_absurd_durations():
    """fma_peak_gflops' parallel region is clamped like every other: a huge thread count
    measures the cores there are instead of crashing inside OpenMP."""
    from mnistnet import _kernels

    assert 0 < _kernels.fma_peak_gflops(threads=100_000, seconds=0.01) < 1e6
    for seconds in (0.0, -1.0, 61.0, float("nan")):
        with pytest.raises(ValueError, match="seconds must lie in"):
            _kernels.fma_peak_gflops(threads=1, seconds=seconds)
