"""Kernel benchmarks: the compiled GEMMs and activations against NumPy on the same buffers.

The GEMMs are those of one batch-32 SGD step of the 784-128-64-10 net (and of the 784-10
perceptron). Each group holds the compiled variant(s) ("fast.…") next to NumPy's ("np.…",
"reference.…"), all writing into the same preallocated output:

* gemm fwd    out (B, OC) = inp (B, C) @ W (C, OC)
* gemm wgrad  dW (C, OC) = inp.T @ dout (B, OC): np.matmul on the transposed view (what the
              NumPy twin does) and on a contiguous copy; fast.sgemm on that copy (the
              compiled step itself calls a transposed-A kernel, timed inside dense_backward)
* gemm dgrad  dinp (B, C) = dout (B, OC) @ W.T, likewise
* dense_forward / dense_backward: the whole layer, compiled vs the NumPy twin (bias and dbias
  included; dense_backward also computes dinp, which the training step skips for layer 0)
* gemm 1024^3: fast.sgemm vs np.matmul on a large square product
* activations: fast vs reference forward on (32, 128) and (10000, 10), backward on (32, 128)
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from mnistnet import fast, reference

B = 32
# (C, OC) of the dense layers whose GEMMs a training step runs.
LAYERS = [(784, 128), (128, 64), (64, 10), (784, 10)]
LAYER_IDS = ["784x128", "128x64", "64x10", "784x10-perceptron"]
# Input gradients exist for every layer but the first: (C, OC) of W1 and W2.
DGRAD_LAYERS = [(128, 64), (64, 10)]


def _f32(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _close(got, want, rtol=1e-4):
    """Sanity check after timing, norm-relative (bench/ does not replace tests/)."""
    err = float(np.max(np.abs(got - want))) / max(float(np.max(np.abs(want))), 1e-30)
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


def _run(benchmark, group, variant, fn, flop=None):
    benchmark.group = group
    benchmark.extra_info["variant"] = variant
    if flop:
        benchmark.extra_info["flop"] = flop
    return benchmark(fn)


# ---- the GEMMs of one batch-32 step ------------------------------------------------------

@pytest.mark.parametrize("variant", ["fast.sgemm", "np.matmul", "fast.dense_forward",
                                     "reference.dense_forward"])
@pytest.mark.parametrize(("c", "oc"), LAYERS, ids=LAYER_IDS)
def test_gemm_forward(benchmark, rng, c, oc, variant):
    """out (B, OC) = inp (B, C) @ W (C, OC) [+ bias for the dense_forward variants]."""
    inp, w, bias = _f32(rng, B, c), _f32(rng, c, oc), _f32(rng, oc)
    out = np.empty((B, oc), dtype=np.float32)
    fn = {"fast.sgemm": partial(fast.sgemm, out, inp, w),
          "np.matmul": partial(np.matmul, inp, w, out=out),
          "fast.dense_forward": partial(fast.dense_forward, out, inp, w, bias),
          "reference.dense_forward": partial(reference.dense_forward, out, inp, w, bias)}
    _run(benchmark, f"gemm fwd ({B}x{c})·({c}x{oc})", variant, fn[variant], 2 * B * c * oc)
    _close(out, inp @ w + (bias if "dense" in variant else 0))


@pytest.mark.parametrize("variant", ["fast.sgemm", "np.matmul", "np.matmul-contiguous"])
@pytest.mark.parametrize(("c", "oc"), LAYERS, ids=LAYER_IDS)
def test_gemm_weight_gradient(benchmark, rng, c, oc, variant):
    """dW (C, OC) = inp.T (C, B) @ dout (B, OC)."""
    inp, dout = _f32(rng, B, c), _f32(rng, B, oc)
    inp_t = np.ascontiguousarray(inp.T)
    dw = np.empty((c, oc), dtype=np.float32)
    fn = {"fast.sgemm": partial(fast.sgemm, dw, inp_t, dout),
          "np.matmul": partial(np.matmul, inp.T, dout, out=dw),
          "np.matmul-contiguous": partial(np.matmul, inp_t, dout, out=dw)}
    _run(benchmark, f"gemm wgrad ({c}x{B})·({B}x{oc}) inp.T@dout", variant, fn[variant],
         2 * B * c * oc)
    _close(dw, inp.T @ dout)


@pytest.mark.parametrize("variant", ["fast.sgemm", "np.matmul", "np.matmul-contiguous"])
@pytest.mark.parametrize(("c", "oc"), DGRAD_LAYERS, ids=["W1-128x64", "W2-64x10"])
def test_gemm_input_gradient(benchmark, rng, c, oc, variant):
    """dinp (B, C) = dout (B, OC) @ W.T (OC, C), W of shape (C, OC)."""
    dout, w = _f32(rng, B, oc), _f32(rng, c, oc)
    w_t = np.ascontiguousarray(w.T)
    dinp = np.empty((B, c), dtype=np.float32)
    fn = {"fast.sgemm": partial(fast.sgemm, dinp, dout, w_t),
          "np.matmul": partial(np.matmul, dout, w.T, out=dinp),
          "np.matmul-contiguous": partial(np.matmul, dout, w_t, out=dinp)}
    _run(benchmark, f"gemm dgrad ({B}x{oc})·({oc}x{c}) dout@W.T", variant, fn[variant],
         2 * B * c * oc)
    _close(dinp, dout @ w.T)


@pytest.mark.parametrize("variant", ["fast.dense_backward", "reference.dense_backward"])
@pytest.mark.parametrize(("c", "oc"), LAYERS, ids=LAYER_IDS)
def test_dense_backward(benchmark, rng, c, oc, variant):
    """The whole layer backward: dinp, dW and db from dout."""
    inp, w, dout = _f32(rng, B, c), _f32(rng, c, oc), _f32(rng, B, oc)
    dinp, dw, db = np.empty_like(inp), np.empty_like(w), np.empty(oc, dtype=np.float32)
    module = fast if variant.startswith("fast") else reference
    _run(benchmark, f"dense_backward B={B} {c}->{oc}", variant,
         partial(module.dense_backward, dinp, dw, db, dout, inp, w), 4 * B * c * oc)
    _close(dw, inp.T @ dout)


@pytest.mark.benchmark(group="gemm 1024^3")
@pytest.mark.parametrize("variant", ["fast.sgemm", "np.matmul"])
def test_gemm_square_1024(benchmark, rng, variant):
    """c (1024, 1024) = a @ b: the large-GEMM throughput of each engine."""
    n = 1024
    a, b = _f32(rng, n, n), _f32(rng, n, n)
    c = np.empty((n, n), dtype=np.float32)
    fn = partial(fast.sgemm, c, a, b) if variant == "fast.sgemm" else partial(
        np.matmul, a, b, out=c)
    benchmark.extra_info["variant"] = variant
    benchmark.extra_info["flop"] = 2 * n**3
    benchmark.pedantic(fn, rounds=20, warmup_rounds=2)
    _close(c[:4], a[:4] @ b)


# ---- activations ----------------------------------------------------------------------------

ACTIVATION_NAMES = ["sigmoid", "relu", "softmax"]


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("shape", [(32, 128), (10000, 10)], ids=["32x128", "10000x10"])
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_forward(benchmark, rng, name, shape, backend):
    inp = _f32(rng, *shape)
    out = np.empty_like(inp)
    module = fast if backend == "fast" else reference
    fn = getattr(module, f"{name}_forward")
    _run(benchmark, f"{name}_forward {shape[0]}x{shape[1]}", f"{backend}.{name}_forward",
         partial(fn, out, inp))
    _close(out, getattr(reference, f"{name}_forward")(None, inp))


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_backward(benchmark, rng, name, backend):
    out = reference.sigmoid_forward(None, _f32(rng, 32, 128))  # a plausible forward output
    dout, dinp = _f32(rng, 32, 128), np.empty((32, 128), dtype=np.float32)
    module = fast if backend == "fast" else reference
    fn = getattr(module, f"{name}_backward")
    _run(benchmark, f"{name}_backward 32x128", f"{backend}.{name}_backward",
         partial(fn, dinp, out, dout))
    _close(dinp, getattr(reference, f"{name}_backward")(None, out, dout))
