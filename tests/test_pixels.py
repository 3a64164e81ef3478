"""uint8 images straight into the epoch, through a leading Rescaling (issue 23).

- Rescaling computes in double and rounds once, so uint8 pixels through Rescaling(1/255) are
  float32(x) / 255: the very bits of x / 255 in float32 (mn.load_mnist's images);
- a model that starts with it trains on uint8 images to the same weights, bit for bit, as the
  model without it on those floats (both backends; the dense nets' fast paths included), and
  predicts the same outputs;
- the uint8 route holds no float copy of the data: fit's peak memory (in a process of its
  own) is far below the float32 route's;
- uint8 x to a model without it is refused, saying to add it or to divide by 255.

Synthetic images: these tests need no dataset.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

import mnistnet as mn
from mnistnet import bench, fast, int8, reference
from mnistnet.inputs import as_features

ROWS = 384


def pixels(n: int, seed: int = 0, side: int = 28) -> np.ndarray:
    """Digit-like uint8 images: mostly black, some ink, every value 0..255 present."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, side * side)).astype(np.uint8)
    x[rng.random(x.shape) < 0.7] = 0
    return x


def labels(n: int, classes: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n).astype(np.uint8)


def over_255(x: np.ndarray) -> np.ndarray:
    """x / 255 as mn.load_mnist computes it (float32 division)."""
    return x.astype(np.float32) / np.float32(255)


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_rescaling_1_255_is_x_over_255_in_float32_for_every_pixel(backend) -> None:
    kernels = fast if backend == "fast" else reference
    every = np.arange(256, dtype=np.float32)
    got = kernels.rescaling_forward(None, every, 1 / 255)
    np.testing.assert_array_equal(got, every / np.float32(255))
    # What the uint8 route reads each pixel as: the same table.
    plan = mn.Model([mn.Rescaling(1 / 255), mn.Dense(10)], input_dim=784).plan
    np.testing.assert_array_equal(fast.pixel_values(plan), every / np.float32(255))
    # Keras' float32 product is not that operation: it would differ for many pixels.
    assert np.count_nonzero(every * np.float32(1 / 255) != every / np.float32(255)) > 100


CASES = [("perceptron", "fast"), ("cross-entropy", "fast"), ("perceptron", "reference"),
         ("hidden-relu", "reference"), ("convnet", "fast"), ("lenet5", "fast")]


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_uint8_through_rescaling_trains_to_the_bits_of_float32_over_255(name, backend) -> None:
    x, y = pixels(ROWS), labels(ROWS)
    xv, yv = pixels(100, seed=2), labels(100, seed=3)
    epochs = 2 if mn.RECIPES[name]["batch_size"] == 32 else 3
    floats = mn.preset(name, backend=backend)
    bytes_ = mn.preset(name, backend=backend, input_dtype="uint8")
    assert type(bytes_.layers[0]) is mn.Rescaling and bytes_.plan.takes_pixels
    np.testing.assert_array_equal(floats.params, bytes_.params)  # the same initial weights
    h_float = floats.fit(over_255(x), y, epochs=epochs, validation_data=(over_255(xv), yv),
                         verbose=0)
    h_bytes = bytes_.fit(x, y, epochs=epochs, validation_data=(xv, yv), verbose=0)
    np.testing.assert_array_equal(floats.params, bytes_.params)
    assert h_float.history == h_bytes.history
    assert not np.array_equal(floats.params, mn.preset(name, backend=backend).params)
    np.testing.assert_array_equal(floats.predict(over_255(xv)), bytes_.predict(xv))
    # A Rescaling model given floats (pixels as floats) reads them the same way.
    np.testing.assert_array_equal(bytes_.predict(xv.astype(np.float32)), bytes_.predict(xv))
    assert floats.evaluate(over_255(xv), yv) == bytes_.evaluate(xv, yv)


def test_a_team_and_one_thread_give_the_same_bits_from_uint8() -> None:
    from mnistnet import _kernels

    x, y = pixels(ROWS), labels(ROWS)
    trained = []
    before = mn.get_num_threads()
    try:
        for threads, schedule in ((1, "serial"), (2, "team"), (2, "probes")):
            mn.set_num_threads(threads)
            _kernels._set_epoch_schedule(schedule)
            model = mn.preset("perceptron", input_dtype="uint8")
            model.fit(x, y, epochs=2, verbose=0)
            trained.append(model.params.copy())
    finally:
        _kernels._set_epoch_schedule("auto")
        mn.set_num_threads(before)
    for other in trained[1:]:
        np.testing.assert_array_equal(trained[0], other)


def test_uint8_rows_are_read_in_place_never_copied_to_floats() -> None:
    x = pixels(8)
    model = mn.preset("perceptron", input_dtype="uint8")
    taken = as_features(x, model.input_shape, pixels=model.plan.takes_pixels)
    assert taken.dtype == np.uint8 and np.shares_memory(taken, x)
    images = x.reshape(8, 28, 28)  # images as well as rows
    assert np.shares_memory(as_features(images, (28, 28, 1), pixels=True), x)


def test_validation_split_and_a_float_nan_check_on_the_rescaling_route() -> None:
    x, y = pixels(200), labels(200)
    model = mn.preset("perceptron", input_dtype="uint8")
    history = model.fit(x, y, epochs=1, validation_split=0.25, verbose=0)
    assert "val_accuracy" in history.history
    floats = x.astype(np.float32)
    floats[3, 5] = np.nan
    before = model.params.copy()
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        model.fit(floats, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(model.params, before)


# ---- clear errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["fit", "predict", "evaluate"])
def test_uint8_to_a_model_without_rescaling_says_how(call) -> None:
    model = mn.preset("perceptron")
    x, y = pixels(4), labels(4)
    run = {"fit": lambda: model.fit(x, y, verbose=0), "predict": lambda: model.predict(x),
           "evaluate": lambda: model.evaluate(x, y)}[call]
    with pytest.raises(TypeError, match=r"x has integer dtype uint8 but the model's first "
                                        r"layer is not Rescaling: add mn\.Rescaling\(1/255\) "
                                        r".*or divide by 255: x\.astype\(np\.float32\) / 255"):
        run()


@pytest.mark.parametrize("backend", [fast, reference])
def test_the_kernels_refuse_uint8_for_a_plan_without_rescaling(backend) -> None:
    model = mn.preset("perceptron")
    acts = np.zeros(4 * model.plan.acts_per_row, np.float32)
    with pytest.raises(TypeError, match=r"add mn\.Rescaling\(1/255\)"):
        backend.predict(model.plan, model.params, acts, pixels(4), None, 4)


def test_a_rescaling_model_takes_uint8_only_among_integers() -> None:
    model = mn.preset("perceptron", input_dtype="uint8")
    with pytest.raises(TypeError, match=r"integer dtype int16; the model's first layer, "
                                        r"Rescaling, takes uint8 pixels as they are"):
        model.predict(pixels(2).astype(np.int16))


def test_preset_input_dtype_and_classes_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown input_dtype 'int8'; valid: float32, uint8"):
        mn.preset("perceptron", input_dtype="int8")
    letters = mn.preset("convnet", classes=26, input_dtype="uint8")
    assert letters.n_outputs == 26 and letters.layers[-1].activation == "softmax"


def test_rescaling_refuses_what_is_not_a_finite_number() -> None:
    with pytest.raises(ValueError, match="scale must be finite"):
        mn.Rescaling(float("inf"))
    with pytest.raises(TypeError, match="offset must be a number"):
        mn.Rescaling(1.0, offset="1")


def test_rescaling_before_images_infers_their_shape() -> None:
    model = mn.Model([mn.Rescaling(1 / 255), mn.Conv2D(2, 3), mn.Flatten(), mn.Dense(10)])
    assert model.input_shape == (28, 28, 1)


# ---- int8 ------------------------------------------------------------------------------------

def test_int8_folds_a_leading_rescaling_into_the_input_quantisation() -> None:
    x, y = pixels(ROWS), labels(ROWS)
    model = mn.preset("cross-entropy", input_dtype="uint8")
    model.fit(x, y, epochs=2, verbose=0)
    q = mn.quantize(model, x[:200])
    # Pixels 0..255 through 1/255 span [0, 1]: quantised as they come, q = pixel - 128.
    assert (q.input_q.scale, q.input_q.zero_point) == (1.0, -128)
    assert q.layers[0].input_q.scale == pytest.approx(1 / 255)
    np.testing.assert_array_equal(q.quantize_input(x[:5]), (x[:5].astype(int) - 128))
    agree = np.mean(q.predict(x).argmax(1) == model.predict(x).argmax(1))
    assert agree > 0.95, agree


def test_int8_folds_a_rescaling_after_a_linear_dense_into_it() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((300, 784), dtype=np.float32)
    model = mn.Model([mn.Dense(32), mn.Rescaling(0.5, offset=0.25), mn.Dense(10)],
                     input_dim=784)
    q = mn.quantize(model, x)
    assert [layer.kind for layer in q.layers] == ["dense", "dense"]
    scale = float(np.abs(model.predict(x)).max())
    assert np.abs(q.predict(x) - model.predict(x)).max() < 0.1 * scale


def test_int8_refuses_a_rescaling_it_cannot_fold() -> None:
    model = mn.Model([mn.Dense(8, activation="relu"), mn.Rescaling(2.0), mn.Dense(10)],
                     input_dim=784)
    with pytest.raises(int8.QuantizationError, match=r"layer 1 \(Rescaling\) to int8: int8 "
                                                     r"models fold a Rescaling"):
        mn.quantize(model, np.random.default_rng(0).random((200, 784), dtype=np.float32))


# ---- memory ----------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                    reason="the peak during fit alone needs Linux's /proc/self/clear_refs")
def test_fit_from_uint8_peaks_far_below_float32(tmp_path) -> None:
    """MNIST's size (60,000 + 10,000 images): a process fitting the perceptron one epoch
    holds the float32 images (219 MB) or the uint8 ones (55 MB); the issue asks for at least
    140 MB less, this bound is looser for a busy machine's noise."""
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    arrays = (pixels(60_000).reshape(-1, 28, 28), labels(60_000),
              pixels(10_000, seed=4).reshape(-1, 28, 28), labels(10_000, seed=5))
    for stem, array in zip(stems, arrays, strict=True):
        write_idx(tmp_path / stem, array)
    as_floats = bench.fit_peak_memory("perceptron", "float32", tmp_path)
    as_bytes = bench.fit_peak_memory("perceptron", "uint8", tmp_path)
    assert as_floats - as_bytes > 120, (as_floats, as_bytes)


def test_int8_c_of_a_rescaling_model_matches_its_twin(tmp_path) -> None:
    """The C's float entry point takes the pixels as they come (0..255 as floats) and
    quantises them with the folded scale: the twin's int8 outputs, to the bit."""
    from types import SimpleNamespace

    from test_export_int8 import C_FLAGS, compiler, exported, probe, run_c

    (tmp_path / "cc").mkdir()
    cc = probe(compiler("CC", "cc", "CC"), C_FLAGS, tmp_path / "cc", "no working C compiler")
    model = mn.preset("cross-entropy", input_dtype="uint8")
    model.fit(pixels(ROWS), labels(ROWS), epochs=1, verbose=0)
    q = mn.quantize(model, pixels(200, seed=6))
    x = pixels(50, seed=7)
    c = SimpleNamespace(name="rescaled", q=q, x=x.astype(np.float32), c_name="rescaled",
                        x_int8=q.quantize_input(x))
    got_int8, got_float = run_c(c, exported(c, tmp_path, C_FLAGS, cc))
    np.testing.assert_array_equal(got_int8, q.predict_int8(c.x_int8))
    assert np.abs(got_float - q.predict(x)).max() <= 1e-6


def test_onnx_of_a_rescaling_model_takes_the_pixels_as_they_come(tmp_path) -> None:
    """The float graph (Mul by the scale) and the int8 QDQ graph (quantised with the raw
    scale, dequantised with the rescaled one) against predict and the twin."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = mn.preset("cross-entropy", input_dtype="uint8")
    model.fit(pixels(ROWS), labels(ROWS), epochs=2, verbose=0)
    x = pixels(50, seed=8)
    session = ort.InferenceSession(str(model.export_onnx(tmp_path / "model.onnx")))
    (got,) = session.run(["output"], {"input": x.astype(np.float32)})
    assert np.abs(got - model.predict(x)).max() < 1e-5
    q = mn.quantize(model, pixels(200, seed=6))
    session = ort.InferenceSession(str(q.export_onnx(tmp_path / "int8.onnx")))
    (got_int8,) = session.run(["output_int8"], {"input": x.astype(np.float32)})
    steps = np.abs(got_int8.astype(int) - q.predict_int8(q.quantize_input(x)))
    assert steps.max() <= 2, steps.max()  # onnxruntime rounds its own way (test_export_int8)


@pytest.mark.parametrize("backend", [fast, reference])
def test_one_train_step_of_a_rescaling_plan_steps_the_layers_after_it(backend) -> None:
    """fast.train_step (and its twin) take x through the plan's leading Rescaling, then
    step plan.engine: the step of the plain perceptron on x / 255."""
    x = pixels(32)
    targets = np.eye(10, dtype=np.float32)[labels(32)]
    results = []
    for model, rows in ((mn.preset("perceptron", input_dtype="uint8"), x),
                        (mn.preset("perceptron"), over_255(x))):
        _, n_acts, n_dacts = model.plan.engine.buffer_sizes(32)
        params, grads = model.params.copy(), np.zeros_like(model.params)
        loss = backend.train_step(model.plan, params, grads, model.optimizer_state,
                                  np.zeros(n_acts, np.float32), np.zeros(n_dacts, np.float32),
                                  model._loss_code, rows, targets,
                                  model.optimizer.kernel_settings(), 0.5, 0, (0, 0, 0))
        results.append((loss, params))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert not np.array_equal(results[0][1], mn.preset("perceptron").params)
