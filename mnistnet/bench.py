"""Reference-vs-fast comparison behind ``mnistnet bench``.

For each preset the same epoch(s) are trained from the same seed on both backends (``fit`` on
the full training set with the preset's recipe, validated on the test set, ``verbose=0``) and
timed; the table gives seconds per epoch, the speed-up (reference / fast), how far apart the
weights ended up, each backend's accuracies, the fast epoch's achieved GFLOP/s as a share of
what ``np.matmul`` reaches on a large GEMM measured in the same run, and how much slower a
fast epoch started right after a reference epoch is than one started after a pause::

    mnistnet bench                                  # the tutorial's three presets
    mnistnet bench --presets convnet                # the convnet (a reference epoch: minutes)
    mnistnet bench --presets perceptron --json      # machine-readable
    mnistnet bench --gemm --peers                   # + per-layer GEMMs, PyTorch/Keras epochs
    mnistnet bench --presets perceptron --uint8     # + the epoch and fit's peak memory from
                                                    #   uint8 images through Rescaling(1/255)
    mnistnet bench --dataset fashion-mnist          # on another dataset of the family

The peers (--peers) each train in a process of their own (mnistnet/peers.py), so that their
thread pools never slow down the timing of mnistnet's own epochs.

The machine is usually shared: compare the ratios within one run, not the seconds across runs.
For a fair NumPy baseline run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset
(``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE mnistnet bench``): they pin OpenBLAS to a
slower kernel than the one it would detect. The compiled kernels' threads follow
``MNISTNET_NUM_THREADS``, OpenBLAS's follow ``OPENBLAS_NUM_THREADS``.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from mnistnet import datasets, fast, reference
from mnistnet._version import __version__
from mnistnet.kinds import peer_layers
from mnistnet.model import Model
from mnistnet.presets import PRESETS, RECIPES, preset
from mnistnet.trainer import History

__all__ = ["epoch_flops", "fit_peak_memory", "format_report", "machine_context",
           "run_comparison", "uint8_comparison"]

DEFAULT_PRESETS = ("perceptron", "hidden-relu", "cross-entropy")
BATCH_SIZE = 32  # the tutorial's; the per-layer GEMMs of --gemm are a step of it
PEER_TIMEOUT = 3600  # seconds for one peer's training
CONTEXT_GEMM_SIZE = 2048
CONTEXT_GEMM_REPEATS = 3
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


def machine_context(gemm_size: int = CONTEXT_GEMM_SIZE,
                    repeats: int = CONTEXT_GEMM_REPEATS) -> dict[str, Any]:
    """The machine as this run sees it: versions, thread counts, the OPENBLAS_* variables
    that slow numpy down, the load average, and np.matmul / fast.sgemm GFLOP/s on a square
    float32 GEMM of side `gemm_size` (best of `repeats`)."""
    rng = np.random.default_rng(0)
    a = rng.random((gemm_size, gemm_size), dtype=np.float32)
    b = rng.random((gemm_size, gemm_size), dtype=np.float32)
    c = np.empty((gemm_size, gemm_size), dtype=np.float32)
    numpy_gflops = _gemm_gflops(lambda: np.matmul(a, b, out=c), gemm_size, gemm_size,
                                gemm_size, repeats)
    fast_gflops = _gemm_gflops(lambda: fast.sgemm(c, a, b), gemm_size, gemm_size, gemm_size,
                               repeats)
    return {
        "numpy_version": np.__version__,
        "mnistnet_version": __version__,
        "blas": _openblas_info(),
        "openblas_env": {k: os.environ[k] for k in OPENBLAS_ENV if k in os.environ},
        "simd_path": fast.simd_path(),
        "fast_threads": fast.get_num_threads(),
        "openmp": bool(fast.openmp_enabled()),
        "cpu_count": os.cpu_count(),
        "load_average": _load_average(),
        "gemm_size": gemm_size,
        "numpy_matmul_gflops": numpy_gflops,
        "fast_sgemm_gflops": fast_gflops,
        "sgemm_vs_matmul": fast_gflops / numpy_gflops,
    }


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Windows
        return None


def _load_data(data: Any, dataset: str = "mnist") -> Data:
    """data as load_mnist's ((x_train, y_train), (x_test, y_test)): None loads the dataset
    (MNIST by default) from the usual places ($MNISTNET_DATA, $MNISTNET_DATASETS, the cache,
    a download); a str/PathLike names a folder of its files."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return datasets.load(dataset, data)
    (x_train, y_train), (x_test, y_test) = data
    return (x_train, y_train), (x_test, y_test)


def _classes(data: Data) -> int:
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
                   classes=_classes(data))
    if settle:
        time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=RECIPES[name]["batch_size"],
                        validation_data=(x_test, y_test), verbose=0)
    return time.perf_counter() - start, model, history


def _compare_preset(name: str, data: Data, epochs: int, repeats: int,
                    matmul_gflops: float) -> dict[str, Any]:
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
        "fast_share_of_matmul": gflops / matmul_gflops,
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
                   dataset: str = "mnist", uint8: bool = False) -> dict[str, Any]:
    """Time the same training on the reference and fast backends, preset by preset.

    Args:
        presets: names from mnistnet.model.PRESETS.
        epochs: epochs trained per timing (reported per epoch).
        data: None (load the dataset the usual way), a folder holding its four files, or
            load_mnist's ((x_train, y_train), (x_test, y_test)).
        dataset: which of mnistnet.datasets.NAMES to load (data None or a folder); the
            presets get one output per class.
        uint8: also time the fast epoch from uint8 images through Rescaling(1/255) against
            the float32 one, check they end with the same weights, and measure fit's peak
            memory both ways, each in a process of its own (uint8_comparison).
        repeats: each timing is the best of this many runs (fresh model, same seed).
        peers: also time PyTorch and Keras 3 on the same training, each in a process of its
            own run by the interpreter `peers_python` (default: this one), if it can import
            them.
        gemm: also time the GEMMs of one batch-32 step of 784-128-64-10, per layer.

    Returns a JSON-serialisable dict: "context" (machine_context), "presets" (one dict per
    preset, see the keys of _compare_preset), "peers", "gemm" and "uint8" when asked
    for."""
    presets = list(presets)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown preset(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(PRESETS)}")
    if epochs < 1 or repeats < 1:
        raise ValueError(f"epochs and repeats must be >= 1, got {epochs} and {repeats}")
    loaded = _load_data(data, dataset)
    context = machine_context()
    result: dict[str, Any] = {
        "context": context,
        "setup": {"epochs": epochs, "repeats": repeats, "dataset": _dataset_name(loaded),
                  "train_rows": int(loaded[0][0].shape[0]),
                  "val_rows": int(loaded[1][0].shape[0])},
        "presets": [_compare_preset(name, loaded, epochs, repeats,
                                    context["numpy_matmul_gflops"]) for name in presets],
    }
    if uint8:
        folder = data if data is None or isinstance(data, (str, os.PathLike)) else False
        result["uint8"] = uint8_comparison(presets, loaded, epochs, repeats, folder, dataset)
    if gemm:
        result["gemm"] = gemm_comparison()
    if peers:
        result["peers"] = peer_comparison(presets, loaded, epochs, repeats, result["presets"],
                                          peers_python or sys.executable)
    context["load_average_end"] = _load_average()
    return result


def _dataset_name(data: Data) -> str | None:
    return data.name if isinstance(data, datasets.Dataset) else None


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
               "" if folder is None else os.fspath(folder), dataset, str(classes)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=PEER_TIMEOUT,
                          check=False)
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
                    rows: Sequence[dict[str, Any]], python: str) -> dict[str, Any]:
    """Seconds per epoch (training plus the validation forward) of the same architecture,
    optimizer and batch size in PyTorch (a hand-written loop) and Keras 3 (model.fit), each
    run in a process of its own by `python` (mnistnet/peers.py), for whichever framework
    that interpreter imports; "message" says so when it imports neither. The peers use as
    many threads as the compiled kernels (all cores by default), so MNISTNET_NUM_THREADS=1
    compares single-threaded runs."""
    fast_seconds = {row["preset"]: row["fast_seconds_per_epoch"] for row in rows}
    classes = _classes(data)
    out: dict[str, Any] = {"frameworks": {}, "message": None, "python": python}
    with tempfile.TemporaryDirectory(prefix="mnistnet-peers-") as folder:
        data_path = os.path.join(folder, "mnist.npz")
        (x_train, y_train), (x_test, y_test) = data
        np.savez(data_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        for label in ("torch", "keras"):
            out["frameworks"][label] = _peer_timings(label, presets, data_path, epochs,
                                                     repeats, python, fast_seconds, folder,
                                                     x_train.shape[0], classes)
    if not any(f["available"] for f in out["frameworks"].values()):
        out["message"] = PEERS_MISSING
    return out


def peer_config(model: Model, rows: int, batch_size: int, epochs: int) -> dict[str, Any]:
    """What mnistnet/peers.py builds and trains: each layer as the table of kinds maps it to
    Keras and PyTorch, the input shape, the loss, and the optimizer with the learning rate
    of every step of `epochs` epochs of `rows` rows (so a schedule is followed exactly)."""
    steps = epochs * -(-rows // batch_size)
    optimizer = {k: v for k, v in model.optimizer.get_config().items() if k != "learning_rate"}
    optimizer["class"] = type(model.optimizer).__name__
    optimizer["rates"] = [float(r) for r in model.optimizer.rates(0, steps)]
    return {"layers": peer_layers(model.layers, model.plan.shapes),
            "input_shape": list(model.input_shape), "outputs": model.n_outputs,
            "loss": {"name": model.loss}, "optimizer": optimizer}


def _peer_timings(label: str, presets: Sequence[str], data_path: str, epochs: int,
                  repeats: int, python: str, fast_seconds: dict[str, float],
                  folder: str, rows: int, classes: int = 10) -> dict[str, Any]:
    timings, version = {}, None
    for name in presets:
        config_path = os.path.join(folder, f"{name}.json")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(peer_config(preset(name, classes=classes), rows,
                                  RECIPES[name]["batch_size"], epochs), f)
        best, run = float("inf"), {}
        for _ in range(repeats):
            run = _run_peer(label, config_path, data_path, epochs, RECIPES[name]["batch_size"],
                            python)
            if "unavailable" in run:
                return {"available": False, "reason": run["unavailable"]}
            seconds = min(t + e for t, e in zip(run["train_seconds"], run["eval_seconds"],
                                                strict=True))
            best = min(best, seconds)
        version = run["version"]
        timings[name] = {"seconds_per_epoch": best, "accuracy": run["accuracy"][-1],
                         "val_accuracy": run["val_accuracy"][-1],
                         "over_fast": best / fast_seconds[name]}
    return {"available": True, "version": version, "presets": timings}


def _run_peer(label: str, config_path: str, data_path: str, epochs: int, batch_size: int,
              python: str) -> dict[str, Any]:
    """One run of mnistnet/peers.py; its JSON result, or {"unavailable": reason}."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers.py")
    command = [python, script, "--framework", label, "--config", config_path, "--data",
               data_path, "--epochs", str(epochs), "--batch-size", str(batch_size),
               "--threads", str(fast.get_num_threads())]
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


def format_report(result: dict[str, Any]) -> str:
    """The comparison as an aligned plain-text table (what `mnistnet bench` prints)."""
    ctx, setup = result["context"], result["setup"]
    lines = [f"mnistnet bench: {setup['epochs']} epoch(s) per timing, best of "
             f"{setup['repeats']}; {setup['train_rows']} training rows, each preset's recipe "
             f"(optimizer, rate, batch), validation on {setup['val_rows']} rows"]
    blas = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']} kernel, "
                     f"{b['num_threads']} threads" for b in ctx["blas"]) or (
        "BLAS kernel unknown (pip install threadpoolctl to see it)")
    load = ctx["load_average"]
    lines.append(f"numpy {ctx['numpy_version']} ({blas}); mnistnet {ctx['mnistnet_version']} "
                 f"({ctx['simd_path']}, {ctx['fast_threads']} thread(s), OpenMP "
                 f"{'on' if ctx['openmp'] else 'off'}); {ctx['cpu_count']} CPUs"
                 + ("" if load is None else f", load average {load:.1f}"))
    if ctx["openblas_env"]:
        env = " ".join(f"{k}={v}" for k, v in ctx["openblas_env"].items())
        lines.append(f"WARNING: {env} is set and slows numpy's OpenBLAS: for a fair baseline "
                     f"run with env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE")
    if load is not None and ctx["cpu_count"] and load > ctx["cpu_count"]:
        lines.append(f"WARNING: the machine is busy (load {load:.1f} on {ctx['cpu_count']} "
                     "CPUs): seconds are noisy, ratios less so")
    n = ctx["gemm_size"]
    lines.append(f"GEMM {n}^3 float32: np.matmul {ctx['numpy_matmul_gflops']:.1f} GFLOP/s, "
                 f"fast.sgemm {ctx['fast_sgemm_gflops']:.1f} GFLOP/s "
                 f"({ctx['sgemm_vs_matmul']:.2f}x np.matmul)")
    lines.append("")
    header = ["preset", "reference s/ep", "fast s/ep", "speed-up", "max|dW|", "rel",
              "reference acc/val", "fast acc/val", "fast GFLOP/s", "of matmul",
              "after ref"]
    table = [header]
    for row in result["presets"]:
        table.append([
            row["preset"], f"{row['reference_seconds_per_epoch']:.3f}",
            f"{row['fast_seconds_per_epoch']:.3f}", f"{row['speedup']:.2f}x",
            f"{row['max_abs_weight_diff']:.1e}", f"{row['relative_weight_diff']:.1e}",
            _fmt_acc(row, "reference"), _fmt_acc(row, "fast"),
            f"{row['fast_gflops']:.1f}", f"{100 * row['fast_share_of_matmul']:.1f}%",
            f"{row['after_reference_over_after_pause']:.2f}x",
        ])
    lines += _align(table)
    lines.append("speed-up = reference / fast; GFLOP/s counts the epoch's GEMMs (forward, "
                 "weight and input gradients, validation forward; conv layers as GEMMs over "
                 "their patches) over the fast fit time; after ref = a fast epoch started "
                 "right after a reference epoch / one started after a pause")
    if "gemm" in result:
        lines.append("")
        table = [["GEMM (batch 32 step)", "shape", "fast us", "numpy us", "numpy/fast"]]
        for row in result["gemm"]:
            table.append([row["op"], row["shape"], f"{row['fast_us']:.2f}",
                          f"{row['numpy_us']:.2f}", f"{row['numpy_over_fast']:.2f}x"])
        lines += _align(table)
    if "uint8" in result:
        lines.append("")
        lines += _format_uint8(result["uint8"])
    if "peers" in result:
        lines.append("")
        lines += _format_peers(result["peers"])
    return "\n".join(lines)


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
    return [*_align(table), note]


def _format_peers(peers: dict[str, Any]) -> list[str]:
    if peers["message"]:
        return [peers["message"]]
    lines = []
    table = [["peer (own process)", "preset", "s/epoch", "x fast", "acc/val"]]
    for label, info in peers["frameworks"].items():
        if not info["available"]:
            lines.append(f"peers: {label} not available ({info['reason']})")
            continue
        for name, t in info["presets"].items():
            table.append([info["version"], name, f"{t['seconds_per_epoch']:.3f}",
                          f"{t['over_fast']:.1f}x",
                          f"{t['accuracy']:.4f}/{t['val_accuracy']:.4f}"])
    return _align(table) + lines


def _align(table: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for r in table:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines
