"""Memory: no allocation inside the epoch, and a bounded peak for a full training run."""

import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import mnistnet as mn
from mnistnet import _kernels, fast
from mnistnet.inputs import as_targets
from mnistnet.trainer import shuffle_order

DATA = os.environ.get("MNISTNET_DATA")


@pytest.fixture(params=["serial", "team"])
def schedule(request):
    """Each way the compiled epoch can run (one thread, or a team of two)."""
    _kernels._set_epoch_schedule(request.param)
    mn.set_num_threads(1 if request.param == "serial" else 2)
    yield request.param
    _kernels._set_epoch_schedule("auto")
    mn.set_num_threads(int(os.environ.get("MNISTNET_NUM_THREADS", "0") or 0))


def test_the_compiled_epoch_allocates_nothing(schedule):
    rng = np.random.default_rng(0)
    x = rng.random((4000, 784), dtype=np.float32)
    targets = as_targets(rng.integers(0, 10, 4000), 4000, 10)
    model = mn.preset("cross-entropy")
    acts, dacts = model._training_buffers(32)  # with the team's workspace, as fit has them
    order = shuffle_order(0, 0, 4000)
    args = model._epoch_arguments(acts, dacts, x, targets, order, 32, 0)
    fast.train_epoch(*args)  # warm up (first-call caches of the Cython module)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fast.train_epoch(*args)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert result[3] == 125  # batches: it did run the epoch
    # 125 steps over a 4000 x 784 dataset; a per-step buffer would show up as >= 100 kB.
    assert peak < 16 * 1024, f"the epoch allocated {peak} bytes through Python"


@pytest.mark.skipif(not DATA, reason="set MNISTNET_DATA to the MNIST folder")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_rss_of_an_epoch_is_the_dataset_plus_100_mb():
    script = textwrap.dedent("""
        import os
        import mnistnet as mn
        (x, y), (xt, yt) = mn.load_mnist(os.environ["MNISTNET_DATA"])
        mn.preset("cross-entropy").fit(x, y, epochs=1, validation_data=(xt, yt), verbose=0)
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (pytest, which
        # may hold MNIST itself) through fork and exec.
        with open("/proc/self/status") as f:
            peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        print(peak_kib * 1024, x.nbytes + xt.nbytes)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, check=True, cwd=os.path.expanduser("~"))
    peak, dataset = map(int, out.stdout.split())
    assert dataset == 70_000 * 784 * 4
    assert peak <= dataset + 100 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB"
