"""Reference-vs-fast comparison behind ``mnistnet bench``.

For each preset the same epoch(s) are trained from the same seed on both backends (``fit`` on
the full training set with the preset's recipe, validated on the test set, ``verbose=0``) and
timed; the table gives seconds per epoch, the speed-up (reference / fast), how far apart the
weights ended up, each backend's accuracies, the fast epoch's achieved GFLOP/s as a share of
the machine's FMA peak (a register-resident multiply-add loop of the active SIMD path, one
thread and all threads, measured at the start of the run) and of what ``np.matmul`` reaches
on a large GEMM in the same run, and how much slower a fast epoch started right after a
reference epoch is than one started after a pause. The context says which CPU (its model
name) and SIMD path ran. Optional sections::

    mnistnet bench                                  # the tutorial's three presets
    mnistnet bench --presets convnet                # the convnet (a reference epoch: minutes)
    mnistnet bench --presets perceptron --json      # machine-readable
    mnistnet bench --gemm --peers                   # + per-layer GEMMs, PyTorch/Keras epochs
    mnistnet bench --presets convnet --subset 12000 # + a short epoch against a full one
    mnistnet bench --presets convnet --predict      # + predict against onnxruntime
    mnistnet bench --presets convnet --busy-core    # + team vs one thread, one core busy
    mnistnet bench --presets convnet --skip-comparison --subset 12000   # the section alone
    mnistnet bench --presets perceptron --uint8     # + the epoch and fit's peak memory from
                                                    #   uint8 images through Rescaling(1/255)
    mnistnet bench --dataset fashion-mnist          # on another dataset of the family

The peers (--peers) each train in a process of their own (mnistnet/peers.py), so that their
thread pools never slow down the timing of mnistnet's own epochs. The time to an accuracy
(``--time-to``) is mnistnet.time_to_accuracy.

The machine is usually shared: compare the ratios within one run, not the seconds across runs.
For a fair NumPy baseline run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset
(``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE mnistnet bench``): they pin OpenBLAS to a
slower kernel than the one it would detect. The compiled kernels' threads follow
``MNISTNET_NUM_THREADS``, OpenBLAS's follow ``OPENBLAS_NUM_THREADS``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np

from mnistnet import datasets, fast, reference
from mnistnet._kernels import fma_peak_gflops
from mnistnet._version import __version__
from mnistnet.kinds import peer_layers
from mnistnet.model import Model
from mnistnet.presets import PRESETS, RECIPES, preset
from mnistnet.trainer import History

__all__ = ["busy_core_epochs", "cpu_model", "epoch_flops", "fit_peak_memory", "fma_peaks",
           "format_report", "machine_context", "machine_identity", "peer_config",
           "predict_against_onnxruntime", "run_comparison", "run_peer", "subset_epochs",
           "uint8_comparison"]

DEFAULT_PRESETS = ("perceptron", "hidden-relu", "cross-entropy")
BATCH_SIZE = 32  # the tutorial's; the per-layer GEMMs of --gemm are a step of it
PEER_TIMEOUT = 3600  # seconds for one peer's training
CONTEXT_GEMM_SIZE = 2048
CONTEXT_GEMM_REPEATS = 3
FMA_PEAK_SECONDS = 0.2  # per thread count measured
SETTLE_SECONDS = 0.3  # pause before each timed run (see _fit_timed)
OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
PEERS_MISSING = "peers: PyTorch and Keras are not installed (pip install 'mnistnet[peers]')"

Data = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


# ---- helpers -----------------------------------------------------------------------------

def preset_flops(name: str, n_train: int, n_val: int = 0) -> int:
    """epoch_flops for any preset, from its layer plan (conv layers count as their GEMMs
    over the patches)."""
    forward, train_row = preset(name).plan.flops_per_sample()
    return n_train * train_row + n_val * forward


def epoch_flops(sizes: Sequence[int], n_train: int, n_val: int = 0) -> int:
    """Floating-point operations of the GEMMs in one epoch: per training row, 2·in·out for
    every dense forward, the same for every weight gradient, and the same for the input
    gradient of every layer but the first; plus one forward pass over n_val rows.
    Elementwise work (activations, losses, biases, SGD) is not counted."""
    layer = [2 * int(a) * int(b) for a, b in itertools.pairwise(sizes)]
    forward = sum(layer)
    train_row = forward + sum(layer) + sum(layer[1:])
    return n_train * train_row + n_val * forward


def _best_seconds(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """Best over `repeat` runs of the mean seconds per call of `number` calls (after one
    warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def _gemm_gflops(fn: Callable[[], Any], m: int, k: int, n: int, repeat: int) -> float:
    return 2.0 * m * k * n / _best_seconds(fn, 1, repeat) / 1e9


def _openblas_info() -> list[dict[str, Any]]:
    """What threadpoolctl (if installed) says about numpy's BLAS: kernel, threads, version."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "architecture", "num_threads", "version")
    return [{k: info.get(k) for k in keys} for info in threadpool_info()
            if info.get("user_api") == "blas"]


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo's "model name" (Linux), else platform.processor(),
    else platform.machine() ("unknown" if none says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_identity() -> dict[str, Any]:
    """What this run ran on, without measuring anything: versions, CPU, SIMD path, thread
    counts, BLAS, the OPENBLAS_* overrides and the load average."""
    return {
        "numpy_version": np.__version__,
        "mnistnet_version": __version__,
        "cpu_model": cpu_model(),
        "blas": _openblas_info(),
        "openblas_env": {k: os.environ[k] for k in OPENBLAS_ENV if k in os.environ},
        "simd_path": fast.simd_path(),
        "fast_threads": fast.get_num_threads(),
        "openmp": bool(fast.openmp_enabled()),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
    }


def fma_peaks(seconds: float = FMA_PEAK_SECONDS) -> dict[str, Any]:
    """The machine's multiply-add limit on the active SIMD path, in GFLOP/s: a
    register-resident FMA loop on one thread and on the kernels' thread count (each
    thread's FLOPs over its own CPU time, summed: other processes taking turns on a core do
    not lower it)."""
    threads = fast.get_num_threads()
    return {"fma_peak_threads": threads,
            "fma_peak_gflops_one_thread": fma_peak_gflops(1, seconds),
            "fma_peak_gflops": fma_peak_gflops(threads, seconds)}


def machine_context(gemm_size: int = CONTEXT_GEMM_SIZE,
                    repeats: int = CONTEXT_GEMM_REPEATS) -> dict[str, Any]:
    """machine_identity, the FMA peak of the active SIMD path (fma_peaks: the yardstick of
    every GFLOP/s figure of the run), and np.matmul / fast.sgemm GFLOP/s on a square float32
    GEMM of side `gemm_size` (best of `repeats`), each also as a share of the peak."""
    context = {**machine_identity(), **fma_peaks()}
    rng = np.random.default_rng(0)
    a = rng.random((gemm_size, gemm_size), dtype=np.float32)
    b = rng.random((gemm_size, gemm_size), dtype=np.float32)
    c = np.empty((gemm_size, gemm_size), dtype=np.float32)
    numpy_gflops = _gemm_gflops(lambda: np.matmul(a, b, out=c), gemm_size, gemm_size,
                                gemm_size, repeats)
    fast_gflops = _gemm_gflops(lambda: fast.sgemm(c, a, b), gemm_size, gemm_size, gemm_size,
                               repeats)
    peak = context["fma_peak_gflops"]
    context.update({
        "gemm_size": gemm_size,
        "numpy_matmul_gflops": numpy_gflops,
        "fast_sgemm_gflops": fast_gflops,
        "sgemm_vs_matmul": fast_gflops / numpy_gflops,
        "numpy_matmul_share_of_fma_peak": numpy_gflops / peak,
        "fast_sgemm_share_of_fma_peak": fast_gflops / peak,
    })
    return context


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Windows
        return None


def load_bench_data(data: Any, dataset: str = "mnist") -> Data:
    """data as load_mnist's ((x_train, y_train), (x_test, y_test)): None loads the dataset
    (MNIST by default) from the usual places ($MNISTNET_DATA, $MNISTNET_DATASETS, the cache,
    a download); a str/PathLike names a folder of its files."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return datasets.load(dataset, data)
    (x_train, y_train), (x_test, y_test) = data
    return (x_train, y_train), (x_test, y_test)


def data_classes(data: Data) -> int:
    """The presets' output units for the data: its class names', else MNIST's 10 (or more
    if the labels need them)."""
    if isinstance(data, datasets.Dataset):
        return len(data.class_names)
    (_, y_train), (_, y_test) = data
    return max(10, int(max(np.max(y_train), np.max(y_test))) + 1)


# ---- the comparison ------------------------------------------------------------------------

def _fit_timed(name: str, backend: str, data: Data, epochs: int,
               settle: bool = True, input_dtype: str = "float32") -> tuple[float, Model, History]:
    """Seconds of `epochs` epochs of the preset's recipe (fit with validation), and the
    model and History. settle: pause first, so that the previous run's BLAS threads go idle
    (OpenBLAS workers spin for about 0.1 s after their last call, and would take a core
    from whichever run comes next). input_dtype "uint8": the preset starting with
    Rescaling(1/255), on data of uint8 pixels."""
    (x_train, y_train), (x_test, y_test) = data
    model = preset(name, seed=0, backend=backend, input_dtype=input_dtype,
                   classes=data_classes(data))
    if settle:
        time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=RECIPES[name]["batch_size"],
                        validation_data=(x_test, y_test), verbose=0)
    return time.perf_counter() - start, model, history


def _compare_preset(name: str, data: Data, epochs: int, repeats: int,
                    context: dict[str, Any]) -> dict[str, Any]:
    seconds = {"reference": float("inf"), "fast": float("inf"), "after": float("inf")}
    models: dict[str, Model] = {}
    histories: dict[str, History] = {}
    for _ in range(repeats):  # interleaved, so drift in machine load hits both backends
        elapsed, models["reference"], histories["reference"] = _fit_timed(
            name, "reference", data, epochs)
        seconds["reference"] = min(seconds["reference"], elapsed / epochs)
        # Right after the reference epoch, with no pause: NumPy's BLAS threads still spin.
        elapsed, _, _ = _fit_timed(name, "fast", data, epochs, settle=False)
        seconds["after"] = min(seconds["after"], elapsed / epochs)
        elapsed, models["fast"], histories["fast"] = _fit_timed(name, "fast", data, epochs)
        seconds["fast"] = min(seconds["fast"], elapsed / epochs)
    diff = float(np.max(np.abs(models["fast"].params - models["reference"].params)))
    scale = float(np.max(np.abs(models["reference"].params)))
    flops = preset_flops(name, data[0][0].shape[0], data[1][0].shape[0])
    gflops = flops / seconds["fast"] / 1e9
    row: dict[str, Any] = {
        "preset": name,
        "layers": [type(layer).__name__ for layer in models["fast"].layers],
        "recipe": RECIPES[name],
        "epochs": epochs,
        "reference_seconds_per_epoch": seconds["reference"],
        "fast_seconds_per_epoch": seconds["fast"],
        "fast_after_reference_seconds_per_epoch": seconds["after"],
        "after_reference_over_after_pause": seconds["after"] / seconds["fast"],
        "speedup": seconds["reference"] / seconds["fast"],
        "max_abs_weight_diff": diff,
        "max_abs_weight": scale,
        "relative_weight_diff": diff / scale if scale else float("nan"),
        "epoch_gflop": flops / 1e9,
        "fast_gflops": gflops,
        "fast_share_of_fma_peak": gflops / context["fma_peak_gflops"],
        "fast_share_of_matmul": gflops / context["numpy_matmul_gflops"],
    }
    for backend in ("reference", "fast"):
        logs = histories[backend].history
        row[f"{backend}_accuracy"] = logs["accuracy"][-1] if logs.get("accuracy") else None
        row[f"{backend}_val_accuracy"] = (logs["val_accuracy"][-1]
                                          if logs.get("val_accuracy") else None)
    return row


def run_comparison(presets: Sequence[str] = DEFAULT_PRESETS, *, epochs: int = 1,
                   data: Any = None, repeats: int = 1, peers: bool = False,
                   gemm: bool = False, peers_python: str | None = None,
                   subset: int | None = None, predict: bool = False, busy_core: bool = False,
                   compare: bool = True, dataset: str = "mnist",
                   uint8: bool = False) -> dict[str, Any]:
    """Time the same training on the reference and fast backends, preset by preset.

    Args:
        presets: names from mnistnet.model.PRESETS.
        epochs: epochs trained per timing (reported per epoch).
        data: None (load the dataset the usual way), a folder holding its four files, or
            load_mnist's ((x_train, y_train), (x_test, y_test)).
        dataset: which of mnistnet.datasets.NAMES to load (data None or a folder); the
            presets get one output per class.
        repeats: each timing is the best of this many runs (fresh model, same seed).
        peers: also time PyTorch and Keras 3 on the same training, each in a process of its
            own run by the interpreter `peers_python` (default: this one), if it can import
            them.
        gemm: also time the GEMMs of one batch-32 step of 784-128-64-10, per layer.
        subset: also time a fast epoch on the first `subset` training rows against one on
            all of them, per image (subset_epochs).
        predict: also time model.predict against the exported model in onnxruntime, in
            this process (predict_against_onnxruntime).
        busy_core: also time fast epochs on the team and on one thread while a busy loop
            runs in a child process (busy_core_epochs).
        compare: False skips the reference-vs-fast epochs (and so "presets" is empty):
            only the sections asked for run.
        uint8: also time the fast epoch from uint8 images through Rescaling(1/255) against
            the float32 one, check they end with the same weights, and measure fit's peak
            memory both ways, each in a process of its own (uint8_comparison).

    Returns a JSON-serialisable dict: "context" (machine_context), "setup", "presets" (one
    dict per preset, see the keys of _compare_preset), and "subset", "busy_core",
    "predict", "gemm", "uint8" and "peers" when asked for."""
    presets = checked_presets(presets)
    if epochs < 1 or repeats < 1:
        raise ValueError(f"epochs and repeats must be >= 1, got {epochs} and {repeats}")
    if peers and not compare:
        raise ValueError("peers are compared with the fast epochs: they need compare=True")
    loaded = load_bench_data(data, dataset)
    n_train = int(loaded[0][0].shape[0])
    if subset is not None and not 1 <= subset <= n_train:
        raise ValueError(f"subset must be between 1 and the {n_train} training rows, got "
                         f"{subset}")
    context = machine_context()
    result: dict[str, Any] = {
        "context": context,
        "setup": {"epochs": epochs, "repeats": repeats, "dataset": _dataset_name(loaded),
                  "train_rows": n_train, "val_rows": int(loaded[1][0].shape[0]),
                  "compare": compare},
        "presets": [_compare_preset(name, loaded, epochs, repeats, context)
                    for name in presets] if compare else [],
    }
    if subset is not None:
        result["subset"] = subset_epochs(presets, loaded, subset, repeats,
                                         context["fma_peak_gflops"])
    if busy_core:
        sizes = [n_train] + ([subset] if subset is not None and subset < n_train else [])
        result["busy_core"] = busy_core_epochs(presets, loaded, sizes, repeats)
    if predict:
        result["predict"] = predict_against_onnxruntime(presets, loaded[1][0], repeats,
                                                        classes=data_classes(loaded))
    if gemm:
        result["gemm"] = gemm_comparison()
    if uint8:
        folder = data if data is None or isinstance(data, (str, os.PathLike)) else False
        result["uint8"] = uint8_comparison(presets, loaded, epochs, repeats, folder, dataset)
    if peers:
        result["peers"] = peer_comparison(presets, loaded, epochs, repeats, result["presets"],
                                          peers_python or sys.executable, context)
    context["load_average_end"] = load_average()
    return result


def checked_presets(presets: Sequence[str]) -> list[str]:
    presets = list(presets)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        raise ValueError(f"unknown preset(s) {', '.join(unknown) or '(none given)'}; valid: "
                         f"{', '.join(PRESETS)}")
    return presets


def _dataset_name(data: Data) -> str | None:
    return data.name if isinstance(data, datasets.Dataset) else None


# ---- short epochs (--subset) ---------------------------------------------------------------

def _epoch_seconds(name: str, x: np.ndarray, y: np.ndarray, classes: int = 10) -> float:
    """Seconds of one fast epoch of the preset's recipe (`classes` outputs) on (x, y),
    without validation (fit and nothing else), after the settling pause."""
    model = preset(name, seed=0, backend="fast", classes=classes)
    time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=RECIPES[name]["batch_size"], verbose=0)
    return time.perf_counter() - start


def _best_epochs(name: str, x: np.ndarray, y: np.ndarray, sizes: Sequence[int],
                 repeats: int, classes: int = 10) -> list[float]:
    """Best seconds of a fast epoch on the first `size` rows, for each size, the sizes
    interleaved within each repeat (so drift in load hits them alike)."""
    best = [float("inf")] * len(sizes)
    for _ in range(repeats):
        for i, size in enumerate(sizes):
            best[i] = min(best[i], _epoch_seconds(name, x[:size], y[:size], classes))
    return best


def subset_epochs(presets: Sequence[str], data: Data, rows: int, repeats: int,
                  fma_peak: float) -> list[dict[str, Any]]:
    """Per preset: a fast epoch (fit without validation, the recipe's batch) on the first
    `rows` training rows against one on all of them, in microseconds per image; their
    quotient (subset_over_full_per_image: 1.0 means a short epoch runs as fast per image as
    a full one); and each epoch's GFLOP/s as a share of the FMA peak."""
    (x_train, y_train), _ = data
    n = x_train.shape[0]
    classes = data_classes(data)
    out = []
    for name in presets:
        full, short = _best_epochs(name, x_train, y_train, (n, rows), repeats, classes)
        full_us, short_us = full / n * 1e6, short / rows * 1e6
        out.append({
            "preset": name, "subset_rows": rows, "full_rows": n,
            "subset_seconds": short, "full_seconds": full,
            "subset_us_per_image": short_us, "full_us_per_image": full_us,
            "subset_over_full_per_image": short_us / full_us,
            "subset_share_of_fma_peak": preset_flops(name, rows) / short / 1e9 / fma_peak,
            "full_share_of_fma_peak": preset_flops(name, n) / full / 1e9 / fma_peak,
        })
    return out


# ---- under load (--busy-core) --------------------------------------------------------------

BUSY_LOOP = "while True:\n    pass\n"
BUSY_START_SECONDS = 0.2  # let the busy loop get going before the first timing


@contextlib.contextmanager
def busy_loop() -> Iterator[subprocess.Popen]:
    """A child process spinning a pure-Python busy loop at this process's niceness (0 unless
    this process runs niced), stopped by its PID on the way out."""
    child = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(BUSY_START_SECONDS)
        if child.poll() is not None:
            raise RuntimeError(f"the busy loop (PID {child.pid}) exited with code "
                               f"{child.returncode}")
        yield child
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGTERM)
        child.wait()


def _niceness(pid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except (AttributeError, OSError):  # not on Windows
        return None


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """The compiled kernels on n threads inside; afterwards the count in effect before is set
    back (fixed at that number)."""
    before = fast.get_num_threads()
    fast.set_num_threads(n)
    try:
        yield
    finally:
        fast.set_num_threads(before)


def _team_and_one_thread(name: str, x: np.ndarray, y: np.ndarray, threads: int,
                         repeats: int, classes: int = 10) -> tuple[float, float]:
    """Best seconds of a fast epoch on `threads` threads and on one, interleaved."""
    team = one = float("inf")
    for _ in range(repeats):
        with fixed_threads(threads):
            team = min(team, _epoch_seconds(name, x, y, classes))
        with fixed_threads(1):
            one = min(one, _epoch_seconds(name, x, y, classes))
    return team, one


def busy_core_epochs(presets: Sequence[str], data: Data, sizes: Sequence[int],
                     repeats: int) -> dict[str, Any]:
    """With a busy loop running in a child process (busy_loop), per preset and epoch size
    (the first `size` training rows): a fast epoch (fit without validation) on all the cores
    this process may run on and on one thread (set_num_threads(1)), best of `repeats` each,
    and team_over_one_thread, their quotient (above 1: the team is slower than one thread
    under the same load). Afterwards the thread count is fixed at the one in effect
    before."""
    (x_train, y_train), _ = data
    threads = fast.available_cores()
    classes = data_classes(data)
    rows = []
    with busy_loop() as child:
        nice = _niceness(child.pid)
        for name in presets:
            for size in sizes:
                team, one = _team_and_one_thread(name, x_train[:size], y_train[:size],
                                                 threads, repeats, classes)
                rows.append({"preset": name, "rows": int(size), "team_threads": threads,
                             "team_seconds": team, "one_thread_seconds": one,
                             "team_over_one_thread": team / one})
        load = load_average()
    return {"busy_nice": nice, "load_average": load, "epochs": rows}


# ---- inference against onnxruntime (--predict) ---------------------------------------------

PREDICT_ROWS = 10_000
ONE_IMAGE_CALLS = 200  # calls per timing of a one-image predict


def _onnxruntime_missing() -> str | None:
    """Why the predict comparison cannot run (None: it can)."""
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError as exc:
            return f"{module} is not installed (pip install 'mnistnet[onnx]'): {exc}"
    return None


def _onnxruntime_session(model: Model, folder: str, threads: int) -> Any:
    """An onnxruntime session of the model exported to ONNX, on the CPU provider with
    `threads` intra-op threads (one inter-op)."""
    import onnxruntime

    path = model.export_onnx(os.path.join(folder, "model.onnx"))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options,
                                        providers=["CPUExecutionProvider"])


def _predict_rows(x_test: np.ndarray, rows: int) -> np.ndarray:
    """`rows` test rows (the test set repeated if it has fewer)."""
    return np.ascontiguousarray(np.resize(x_test, (rows, x_test.shape[1])))


def _predict_preset(name: str, x: np.ndarray, repeats: int, threads: int,
                    folder: str, classes: int = 10) -> dict[str, Any]:
    """model.predict against onnxruntime on the rows x and on one image; mnistnet timed
    before the session exists, so onnxruntime's spinning threads cannot slow it down."""
    model = preset(name, seed=0, backend="fast", classes=classes)
    batch = x.reshape(-1, *model.input_shape)
    one = batch[:1].copy()
    fast_rows = _best_seconds(partial(model.predict, batch), 1, max(repeats, 3))
    fast_one = _best_seconds(partial(model.predict, one), ONE_IMAGE_CALLS, max(repeats, 5))
    session = _onnxruntime_session(model, folder, threads)
    feed = session.get_inputs()[0].name
    ort_rows = _best_seconds(partial(session.run, None, {feed: batch}), 1, max(repeats, 3))
    ort_one = _best_seconds(partial(session.run, None, {feed: one}), ONE_IMAGE_CALLS,
                            max(repeats, 5))
    diff = float(np.max(np.abs(session.run(None, {feed: batch})[0] - model.predict(batch))))
    del session  # its thread pool goes before the next preset's mnistnet timings
    return {"preset": name, "rows": int(x.shape[0]),
            "fast_seconds": fast_rows, "onnxruntime_seconds": ort_rows,
            "onnxruntime_over_fast": ort_rows / fast_rows,
            "fast_one_image_us": fast_one * 1e6, "onnxruntime_one_image_us": ort_one * 1e6,
            "onnxruntime_over_fast_one_image": ort_one / fast_one,
            "max_abs_output_diff": diff}


def predict_against_onnxruntime(presets: Sequence[str], x_test: np.ndarray,
                                repeats: int, rows: int | None = None,
                                classes: int = 10) -> dict[str, Any]:
    """Per preset (a fresh model, seed 0, `classes` outputs), model.predict on `rows` test
    rows (PREDICT_ROWS by default; the test set repeated if shorter) and on one image,
    against the model exported to ONNX and run by onnxruntime in this process
    (CPUExecutionProvider, the kernels' thread count as its intra-op threads). The ratios
    are onnxruntime's seconds over mnistnet's: above 1, mnistnet is faster. {"available":
    False, "reason": ...} without onnx or onnxruntime."""
    missing = _onnxruntime_missing()
    if missing:
        return {"available": False, "reason": missing}
    import onnxruntime

    threads = fast.get_num_threads()
    x = _predict_rows(x_test, rows or PREDICT_ROWS)
    with tempfile.TemporaryDirectory(prefix="mnistnet-predict-") as folder:
        timings = [_predict_preset(name, x, repeats, threads, folder, classes)
                   for name in presets]
    return {"available": True, "onnxruntime_version": onnxruntime.__version__,
            "threads": threads, "presets": timings}


# ---- uint8 images through Rescaling (--uint8) ----------------------------------------------

def as_pixels(x: np.ndarray) -> np.ndarray:
    """float32 images that are uint8 pixels / 255 (load_mnist's) as those pixels; exact:
    p / 255 correctly rounded times 255 rounds back to p."""
    pixels = np.rint(np.asarray(x, dtype=np.float64) * 255).astype(np.uint8)
    if not np.array_equal(pixels.astype(np.float32) / np.float32(255), x):
        raise ValueError("the uint8 comparison needs images that are pixels / 255 (as "
                         "mn.load_mnist and mn.datasets.load give them)")
    return pixels


def uint8_comparison(presets: Sequence[str], data: Data, epochs: int = 1, repeats: int = 1,
                     folder: Any = None, dataset: str = "mnist") -> list[dict[str, Any]]:
    """Per preset, the fast backend's seconds per epoch (fit with validation, best of
    `repeats`, the two routes interleaved) from float32 images and from the same images as
    uint8 through Rescaling(1/255) (mn.preset(..., input_dtype="uint8")), whether both end
    with the same weights (they should, bit for bit), and, unless `folder` is False (data
    given as arrays), the peak memory of a fit of one epoch each way, each in a process of
    its own that loads the dataset itself (fit_peak_memory)."""
    (x_train, y_train), (x_test, y_test) = data
    pixels = ((as_pixels(x_train), y_train), (as_pixels(x_test), y_test))
    rows = []
    for name in presets:
        best = {"float32": float("inf"), "uint8": float("inf")}
        models: dict[str, Model] = {}
        for _ in range(repeats):
            for route, route_data in (("float32", data), ("uint8", pixels)):
                elapsed, models[route], _ = _fit_timed(name, "fast", route_data, epochs,
                                                       input_dtype=route)
                best[route] = min(best[route], elapsed / epochs)
        row: dict[str, Any] = {
            "preset": name, "float32_seconds_per_epoch": best["float32"],
            "uint8_seconds_per_epoch": best["uint8"],
            "uint8_speedup": best["float32"] / best["uint8"],
            "same_weights": bool(np.array_equal(models["float32"].params,
                                                models["uint8"].params))}
        if folder is not False:
            for route in ("float32", "uint8"):
                row[f"{route}_fit_peak_mb"] = fit_peak_memory(name, route, folder, dataset)
            row["peak_mb_saved"] = row["float32_fit_peak_mb"] - row["uint8_fit_peak_mb"]
        rows.append(row)
    return rows


# The child process of fit_peak_memory: load the dataset as the route takes it, reset the
# peak RSS (Linux: /proc/self/clear_refs), fit one epoch, report the peak since the reset
# (VmHWM: getrusage's ru_maxrss also keeps the parent's peak, inherited through exec).
PEAK_SCRIPT = """
import json, resource, sys
import mnistnet as mn
name, route, folder, dataset, classes = sys.argv[1:]
(x, y), (xt, yt) = mn.datasets.load(dataset, folder or None, normalize=route == "float32")
model = mn.preset(name, input_dtype=route, classes=int(classes))
def peak_mb():
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):  # not Linux: the process's peak, in KiB or bytes
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 1024 if sys.platform != "darwin" else rss / 2**20
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    since = "fit"
except OSError:
    since = "start"
model.fit(x, y, epochs=1, batch_size=mn.RECIPES[name]["batch_size"],
          validation_data=(xt, yt), verbose=0)
print(json.dumps({"peak_mb": peak_mb(), "since": since}))
"""


def fit_peak_memory(name: str, input_dtype: str, folder: Any = None,
                    dataset: str = "mnist") -> float:
    """MB of the peak resident memory of a process during a fit of one epoch of preset
    `name` (with validation), its data loaded as float32 in [0, 1] (input_dtype "float32")
    or as uint8 pixels into the preset started with Rescaling(1/255) ("uint8"): the data it
    holds, the model and the epoch's buffers. On Linux the peak is reset once the data is
    loaded (/proc/self/clear_refs) and read as VmHWM; elsewhere it is getrusage's peak of
    the whole process, loading included."""
    classes = len(datasets.class_names(dataset))
    command = [sys.executable, "-c", PEAK_SCRIPT, name, input_dtype,
               "" if folder is None else os.path.abspath(folder), dataset, str(classes)]
    # Run from the folder holding this mnistnet, so that the child imports this one (python
    # -c puts its working folder first on sys.path: a source checkout there would shadow it).
    done = subprocess.run(command, capture_output=True, text=True, timeout=PEER_TIMEOUT,
                          check=False, cwd=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the peak-memory process failed ({done.returncode}): {tail}")
    return float(json.loads(lines[-1])["peak_mb"])


# ---- per-layer GEMMs (--gemm) --------------------------------------------------------------

def gemm_shapes() -> list[tuple[str, str, int, int, int, int]]:
    """(label, kind, layer, M, K, N) for the GEMMs of one batch-32 step of 784-128-64-10
    (and of the perceptron's 784-10): kind "fwd" is inp @ W, "wgrad" is inp.T @ dout,
    "dgrad" is dout @ W.T; layer indexes the net's weights (W0 784x128, W1 128x64, W2 64x10;
    layer -1 is the perceptron's 784x10)."""
    b = BATCH_SIZE
    return [
        ("fwd L0", "fwd", 0, b, 784, 128), ("fwd L1", "fwd", 1, b, 128, 64),
        ("fwd L2", "fwd", 2, b, 64, 10), ("fwd perceptron", "fwd", -1, b, 784, 10),
        ("wgrad L0", "wgrad", 0, 784, b, 128), ("wgrad L1", "wgrad", 1, 128, b, 64),
        ("wgrad L2", "wgrad", 2, 64, b, 10), ("wgrad perceptron", "wgrad", -1, 784, b, 10),
        ("dgrad L1", "dgrad", 1, b, 64, 128), ("dgrad L2", "dgrad", 2, b, 10, 64),
    ]


def gemm_comparison(number: int = 200, repeat: int = 7) -> list[dict[str, Any]]:
    """Microseconds per GEMM for the shapes of gemm_shapes(): fast.sgemm vs np.matmul on
    the same contiguous (M, K) @ (K, N) buffers, and, per layer, the whole compiled
    dense_forward/dense_backward vs the NumPy twin (which uses transposed views)."""
    rng = np.random.default_rng(0)
    rows = []
    for label, _, _, m, k, n in gemm_shapes():
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), dtype=np.float32)
        t_fast = _best_seconds(partial(fast.sgemm, c, a, b), number, repeat)
        t_numpy = _best_seconds(partial(np.matmul, a, b, out=c), number, repeat)
        rows.append({"op": f"sgemm {label}", "shape": f"({m}x{k})·({k}x{n})",
                     "fast_us": t_fast * 1e6, "numpy_us": t_numpy * 1e6,
                     "numpy_over_fast": t_numpy / t_fast})
    for c_in, c_out in ((784, 128), (128, 64), (64, 10), (784, 10)):
        inp = rng.standard_normal((BATCH_SIZE, c_in), dtype=np.float32)
        w = rng.standard_normal((c_in, c_out), dtype=np.float32)
        bias = rng.standard_normal(c_out, dtype=np.float32)
        dout = rng.standard_normal((BATCH_SIZE, c_out), dtype=np.float32)
        out = np.empty((BATCH_SIZE, c_out), dtype=np.float32)
        dinp, dw, db = np.empty_like(inp), np.empty_like(w), np.empty_like(bias)
        shape = f"B={BATCH_SIZE} {c_in}->{c_out}"
        for op, f_fast, f_ref in (
            ("dense_forward", partial(fast.dense_forward, out, inp, w, bias),
             partial(reference.dense_forward, out, inp, w, bias)),
            ("dense_backward", partial(fast.dense_backward, dinp, dw, db, dout, inp, w),
             partial(reference.dense_backward, dinp, dw, db, dout, inp, w)),
        ):
            t_fast = _best_seconds(f_fast, number, repeat)
            t_numpy = _best_seconds(f_ref, number, repeat)
            rows.append({"op": op, "shape": shape, "fast_us": t_fast * 1e6,
                         "numpy_us": t_numpy * 1e6, "numpy_over_fast": t_numpy / t_fast})
    return rows


# ---- peers (--peers) -----------------------------------------------------------------------

def peer_comparison(presets: Sequence[str], data: Data, epochs: int, repeats: int,
                    rows: Sequence[dict[str, Any]], python: str,
                    context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Seconds per epoch (training plus the validation forward) of the same architecture,
    optimizer and batch size in PyTorch (a hand-written loop) and Keras 3 (model.fit), each
    run in a process of its own by `python` (mnistnet/peers.py), for whichever framework
    that interpreter imports; "message" says so when it imports neither. The peers use as
    many threads as the compiled kernels (all cores by default), so MNISTNET_NUM_THREADS=1
    compares single-threaded runs. `rows` are the fast epochs' (_compare_preset); with the
    run's `context`, each peer's GFLOP/s (the same counted FLOPs) is also a share of its FMA
    peak."""
    fast_rows = {row["preset"]: row for row in rows}
    peak = context["fma_peak_gflops"] if context else None
    classes = data_classes(data)
    out: dict[str, Any] = {"frameworks": {}, "message": None, "python": python}
    with tempfile.TemporaryDirectory(prefix="mnistnet-peers-") as folder:
        data_path = write_peer_data(data, folder)
        for label in ("torch", "keras"):
            out["frameworks"][label] = _peer_timings(label, presets, data_path, epochs,
                                                     repeats, python, fast_rows, folder,
                                                     data[0][0].shape[0], peak, classes)
    if not any(f["available"] for f in out["frameworks"].values()):
        out["message"] = PEERS_MISSING
    return out


def write_peer_data(data: Data, folder: str) -> str:
    """The data as peers.py reads it: an .npz of x_train, y_train, x_test, y_test in
    `folder`; its path."""
    path = os.path.join(folder, "mnist.npz")
    (x_train, y_train), (x_test, y_test) = data
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def peer_loss(loss: Any) -> dict[str, Any]:
    """The loss as peers.py reads it, {"name": ..., "label_smoothing": ...}, from a model
    config's "loss": a name, or a dict with a "name" and the loss's arguments."""
    if isinstance(loss, str):
        return {"name": loss}
    if isinstance(loss, dict) and "name" in loss:
        return dict(loss)
    raise TypeError(f"cannot give the peers the loss {loss!r}: expected a name or a dict "
                    "with a 'name'")


def peer_config(model: Model, rows: int, batch_size: int, epochs: int) -> dict[str, Any]:
    """What mnistnet/peers.py builds and trains: each layer as the table of kinds maps it to
    Keras and PyTorch, the input shape, the loss (with its label smoothing, if any), and the
    optimizer's settings (use_ema and ema_momentum among them, if set) with the learning rate
    of every step of `epochs` epochs of `rows` rows (so a schedule is followed exactly)."""
    steps = epochs * -(-rows // batch_size)
    optimizer = {k: v for k, v in model.optimizer.get_config().items() if k != "learning_rate"}
    optimizer["class"] = type(model.optimizer).__name__
    optimizer["rates"] = [float(r) for r in model.optimizer.rates(0, steps)]
    return {"layers": peer_layers(model.layers, model.plan.shapes),
            "input_shape": list(model.input_shape), "outputs": model.n_outputs,
            "loss": peer_loss(model.get_config()["loss"]), "optimizer": optimizer}


def write_peer_config(model: Model, rows: int, batch_size: int, epochs: int,
                      path: str) -> str:
    """peer_config written as JSON to `path`; the path."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(peer_config(model, rows, batch_size, epochs), f)
    return path


def _peer_timings(label: str, presets: Sequence[str], data_path: str, epochs: int,
                  repeats: int, python: str, fast_rows: dict[str, dict[str, Any]],
                  folder: str, rows: int, peak: float | None,
                  classes: int = 10) -> dict[str, Any]:
    timings, version = {}, None
    for name in presets:
        batch_size = RECIPES[name]["batch_size"]
        config_path = write_peer_config(preset(name, classes=classes), rows, batch_size,
                                        epochs, os.path.join(folder, f"{name}.json"))
        best, run = float("inf"), {}
        for _ in range(repeats):
            run = run_peer(label, config_path, data_path, epochs, batch_size, python)
            if "unavailable" in run:
                return {"available": False, "reason": run["unavailable"]}
            seconds = min(t + e for t, e in zip(run["train_seconds"], run["eval_seconds"],
                                                strict=True))
            best = min(best, seconds)
        version = run["version"]
        fast_row = fast_rows[name]
        gflops = fast_row["epoch_gflop"] / best
        timings[name] = {"seconds_per_epoch": best, "accuracy": run["accuracy"][-1],
                         "val_accuracy": run["val_accuracy"][-1],
                         "over_fast": best / fast_row["fast_seconds_per_epoch"],
                         "gflops": gflops,
                         "share_of_fma_peak": gflops / peak if peak else None}
    return {"available": True, "version": version, "presets": timings}


def run_peer(label: str, config_path: str, data_path: str, epochs: int, batch_size: int,
             python: str, seed: int = 0, target: float | None = None) -> dict[str, Any]:
    """One run of mnistnet/peers.py (seed `seed`; stopping after the first epoch whose test
    accuracy reaches `target`, if given); its JSON result, or {"unavailable": reason}."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers.py")
    command = [python, script, "--framework", label, "--config", config_path, "--data",
               data_path, "--epochs", str(epochs), "--batch-size", str(batch_size),
               "--threads", str(fast.get_num_threads()), "--seed", str(seed)]
    if target is not None:
        command += ["--target", repr(target)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PEER_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"unavailable": f"exit code {done.returncode}: {tail}"}
    return json.loads(lines[-1])


# ---- output --------------------------------------------------------------------------------

def _fmt_acc(row: dict[str, Any], backend: str) -> str:
    acc, val = row[f"{backend}_accuracy"], row[f"{backend}_val_accuracy"]
    return "-" if acc is None else f"{acc:.4f}/{val:.4f}"


def format_identity(ctx: dict[str, Any], numpy_timed: bool = True) -> list[str]:
    """The lines saying what ran where (machine_identity's keys), with warnings about a busy
    machine and (if numpy_timed: the run times numpy) OPENBLAS_* overrides."""
    blas = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']} kernel, "
                     f"{b['num_threads']} threads" for b in ctx["blas"]) or (
        "BLAS kernel unknown (pip install threadpoolctl to see it)")
    load = ctx["load_average"]
    lines = [f"CPU {ctx['cpu_model']}, {ctx['cpu_count']} CPUs"
             + ("" if load is None else f", load average {load:.1f}")
             + f"; mnistnet {ctx['mnistnet_version']} ({ctx['simd_path']} SIMD path, "
             f"{ctx['fast_threads']} thread(s), OpenMP {'on' if ctx['openmp'] else 'off'}); "
             f"numpy {ctx['numpy_version']} ({blas})"]
    if numpy_timed and ctx["openblas_env"]:
        env = " ".join(f"{k}={v}" for k, v in ctx["openblas_env"].items())
        lines.append(f"WARNING: {env} is set and slows numpy's OpenBLAS: for a fair baseline "
                     f"run with env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE")
    if load is not None and ctx["cpu_count"] and load > ctx["cpu_count"]:
        lines.append(f"WARNING: the machine is busy (load {load:.1f} on {ctx['cpu_count']} "
                     "CPUs): seconds are noisy, ratios less so")
    return lines


def _format_limits(ctx: dict[str, Any]) -> list[str]:
    n = ctx["gemm_size"]
    return [
        f"FMA peak ({ctx['simd_path']}, register-resident multiply-adds): "
        f"{ctx['fma_peak_gflops_one_thread']:.1f} GFLOP/s on one thread, "
        f"{ctx['fma_peak_gflops']:.1f} on {ctx['fma_peak_threads']}: every \"of peak\" below "
        "is a share of the latter",
        f"GEMM {n}^3 float32: np.matmul {ctx['numpy_matmul_gflops']:.1f} GFLOP/s "
        f"({_pct(ctx['numpy_matmul_share_of_fma_peak'])} of peak), fast.sgemm "
        f"{ctx['fast_sgemm_gflops']:.1f} GFLOP/s ({_pct(ctx['fast_sgemm_share_of_fma_peak'])} "
        f"of peak, {ctx['sgemm_vs_matmul']:.2f}x np.matmul)"]


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def _format_presets(rows: Sequence[dict[str, Any]]) -> list[str]:
    table = [["preset", "reference s/ep", "fast s/ep", "speed-up", "max|dW|", "rel",
              "reference acc/val", "fast acc/val", "fast GFLOP/s", "of peak", "of matmul",
              "after ref"]]
    for row in rows:
        table.append([
            row["preset"], f"{row['reference_seconds_per_epoch']:.3f}",
            f"{row['fast_seconds_per_epoch']:.3f}", f"{row['speedup']:.2f}x",
            f"{row['max_abs_weight_diff']:.1e}", f"{row['relative_weight_diff']:.1e}",
            _fmt_acc(row, "reference"), _fmt_acc(row, "fast"),
            f"{row['fast_gflops']:.1f}", _pct(row["fast_share_of_fma_peak"]),
            _pct(row["fast_share_of_matmul"]),
            f"{row['after_reference_over_after_pause']:.2f}x",
        ])
    return [*align_table(table),
        "speed-up = reference / fast; GFLOP/s counts the epoch's GEMMs (forward, weight and "
        "input gradients, validation forward; conv layers as GEMMs over their patches) over "
        "the fast fit time; after ref = a fast epoch started right after a reference epoch / "
        "one started after a pause"]


def _format_subset(rows: Sequence[dict[str, Any]]) -> list[str]:
    table = [["short epoch (fast, no validation)", "rows", "s", "us/image", "of peak",
              "full rows", "full s", "full us/image", "full of peak", "short/full per image"]]
    for r in rows:
        table.append([r["preset"], str(r["subset_rows"]), f"{r['subset_seconds']:.3f}",
                      f"{r['subset_us_per_image']:.1f}", _pct(r["subset_share_of_fma_peak"]),
                      str(r["full_rows"]), f"{r['full_seconds']:.3f}",
                      f"{r['full_us_per_image']:.1f}", _pct(r["full_share_of_fma_peak"]),
                      f"{r['subset_over_full_per_image']:.2f}x"])
    return align_table(table)


def _format_busy_core(busy: dict[str, Any]) -> list[str]:
    nice = "" if busy["busy_nice"] is None else f" (nice {busy['busy_nice']})"
    table = [["one core busy" + nice, "rows", "threads", "team s", "one-thread s",
              "team/one-thread"]]
    for r in busy["epochs"]:
        table.append([r["preset"], str(r["rows"]), str(r["team_threads"]),
                      f"{r['team_seconds']:.3f}", f"{r['one_thread_seconds']:.3f}",
                      f"{r['team_over_one_thread']:.2f}x"])
    return [*align_table(table),
        "a fast epoch (no validation) while a busy loop runs in a child process; "
        "team/one-thread above 1: the team is slower than one thread under the same load"]


def _format_predict(predict: dict[str, Any]) -> list[str]:
    if not predict["available"]:
        return [f"predict: onnxruntime comparison not run ({predict['reason']})"]
    table = [["predict (same process)", "rows", "mnistnet ms", "onnxruntime ms", "ort/mnistnet",
              "1 image mnistnet us", "onnxruntime us", "ort/mnistnet", "max|diff|"]]
    for r in predict["presets"]:
        table.append([r["preset"], str(r["rows"]), f"{r['fast_seconds'] * 1e3:.2f}",
                      f"{r['onnxruntime_seconds'] * 1e3:.2f}",
                      f"{r['onnxruntime_over_fast']:.2f}x", f"{r['fast_one_image_us']:.1f}",
                      f"{r['onnxruntime_one_image_us']:.1f}",
                      f"{r['onnxruntime_over_fast_one_image']:.2f}x",
                      f"{r['max_abs_output_diff']:.1e}"])
    return [*align_table(table),
        f"onnxruntime {predict['onnxruntime_version']}, CPUExecutionProvider, "
        f"{predict['threads']} intra-op thread(s); ort/mnistnet above 1: mnistnet is faster"]


def _format_gemm(rows: Sequence[dict[str, Any]]) -> list[str]:
    table = [["GEMM (batch 32 step)", "shape", "fast us", "numpy us", "numpy/fast"]]
    for row in rows:
        table.append([row["op"], row["shape"], f"{row['fast_us']:.2f}",
                      f"{row['numpy_us']:.2f}", f"{row['numpy_over_fast']:.2f}x"])
    return align_table(table)


def _format_uint8(rows: list[dict[str, Any]]) -> list[str]:
    table = [["uint8 through Rescaling", "float32 s/ep", "uint8 s/ep", "speed-up",
              "same weights", "fit peak MB float32", "uint8", "saved"]]
    for row in rows:
        memory = ([f"{row[k]:.0f}" for k in ("float32_fit_peak_mb", "uint8_fit_peak_mb",
                                              "peak_mb_saved")]
                  if "peak_mb_saved" in row else ["-", "-", "-"])
        table.append([row["preset"], f"{row['float32_seconds_per_epoch']:.3f}",
                      f"{row['uint8_seconds_per_epoch']:.3f}", f"{row['uint8_speedup']:.2f}x",
                      "yes" if row["same_weights"] else "NO", *memory])
    note = ("fast backend, one run each way per repeat, interleaved; the peak memory of a "
            "fit of one epoch in a process of its own, counted from the data loaded")
    return [*align_table(table), note]


def _format_peers(peers: dict[str, Any]) -> list[str]:
    if peers["message"]:
        return [peers["message"]]
    lines = []
    table = [["peer (own process)", "preset", "s/epoch", "x fast", "GFLOP/s", "of peak",
              "acc/val"]]
    for label, info in peers["frameworks"].items():
        if not info["available"]:
            lines.append(f"peers: {label} not available ({info['reason']})")
            continue
        for name, t in info["presets"].items():
            share = "-" if t.get("share_of_fma_peak") is None else _pct(t["share_of_fma_peak"])
            table.append([info["version"], name, f"{t['seconds_per_epoch']:.3f}",
                          f"{t['over_fast']:.1f}x", f"{t['gflops']:.1f}", share,
                          f"{t['accuracy']:.4f}/{t['val_accuracy']:.4f}"])
    return align_table(table) + lines


SECTION_FORMATS: dict[str, Callable[[Any], list[str]]] = {
    "subset": _format_subset, "busy_core": _format_busy_core, "predict": _format_predict,
    "gemm": _format_gemm, "uint8": _format_uint8, "peers": _format_peers}


def format_report(result: dict[str, Any]) -> str:
    """The comparison as aligned plain-text tables (what `mnistnet bench` prints)."""
    ctx, setup = result["context"], result["setup"]
    what = (f"{setup['epochs']} epoch(s) per timing, best of {setup['repeats']}; "
            f"{setup['train_rows']} training rows, each preset's recipe (optimizer, rate, "
            f"batch), validation on {setup['val_rows']} rows")
    lines = [f"mnistnet bench: {what}", *format_identity(ctx), *_format_limits(ctx)]
    if result["presets"]:
        lines += ["", *_format_presets(result["presets"])]
    for key, formatter in SECTION_FORMATS.items():
        if key in result:
            lines += ["", *formatter(result[key])]
    return "\n".join(lines)


def align_table(table: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for r in table:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines
