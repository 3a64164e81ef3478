"""mnistnet.int8: the arithmetic against values worked out by hand (rounding at .5, saturation
at -128 and 127, multipliers and shifts of scales large and tiny, the tanh and sigmoid
tables), the layers' lowering (BatchNormalization folded, ReLUs fused, hidden tanh and
sigmoid as tables), the twin against the float model on MNIST, and the errors a user can
cause."""

from __future__ import annotations

import math

import numpy as np
import pytest
from int8_models import case, images, mnist, pooling_steps, trained, trained_case

import mnistnet as mn
from mnistnet import int8
from mnistnet.int8 import QParams, QuantizationError

# ---- the arithmetic, by hand ---------------------------------------------------------------


@pytest.mark.parametrize(("low", "high", "scale", "zero_point"), [
    (0.0, 1.0, 1 / 255, -128),      # images: 0 -> -128, 1 -> 127
    (-127.5, 127.5, 1.0, -1),       # -128 + 127.5 = -0.5: the half rounds away from zero
    (-2.5, 252.5, 1.0, -126),       # -128 + 2.5 = -125.5 -> -126
    (0.5, 2.0, 2 / 255, -128),      # widened to hold 0: [0, 2]
    (-3.0, -1.0, 3 / 255, 127),     # [-3, 0]: 0 is the top
    (-1e6, 1e-6, 1e6 / 255, 127),   # a zero point beyond int8 is clamped
])
def test_qparams_from_range(low, high, scale, zero_point) -> None:
    q = QParams.from_range(low, high)
    assert q.scale == float(np.float32(scale))
    assert q.zero_point == zero_point


def test_qparams_of_a_constant_zero_tensor() -> None:
    assert QParams.from_range(0.0, 0.0) == QParams(1.0, 0)


def test_qparams_refuse_a_non_finite_range() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        QParams.from_range(-np.inf, 1.0)


def test_round_half_away() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.49999997, 2.4, -2.6])
    assert int8.round_half_away(x).tolist() == [1, 2, 3, -1, -2, -3, 0, 0, 2, -3]


def test_quantize_values_rounds_halves_away_and_saturates() -> None:
    q = QParams(0.5, 10)
    x = np.float32([0.0, 0.25, -0.25, 0.75, -0.75, 0.2, 1.0, 58.5, 58.75, 100.0, -69.0,
                    -69.25, -100.0, np.nan, np.inf, -np.inf])
    want = [10, 11, 9, 12, 8, 10, 12, 127, 127, 127, -128, -128, -128, -128, 127, -128]
    got = int8.quantize_values(x, q)
    assert got.dtype == np.int8 and got.tolist() == want


def test_dequantize_values() -> None:
    got = int8.dequantize_values(np.int8([12, 10, -128, 127]), QParams(0.5, 10))
    assert got.dtype == np.float32 and got.tolist() == [1.0, 0.0, -69.0, 58.5]


@pytest.mark.parametrize(("scale", "multiplier", "shift"), [
    (0.5, 2**30, 0),
    (0.25, 2**30, -1),
    (0.75, 3 * 2**29, 0),
    (1.0, 2**30, 1),                        # scales >= 1 shift left
    (3.0, 3 * 2**29, 2),
    (1000.0, round(1000 / 1024 * 2**31), 10),
    (1 - 2.0**-40, 2**30, 1),               # the fraction rounds up to 1: halved, shift + 1
    (0.0, 0, 0),
    (0.75 * 2.0**-31, 3 * 2**29, -31),      # the smallest shift kept
    (0.75 * 2.0**-32, 0, 0),                # smaller: the product is 0
    (1e-12, 0, 0),
])
def test_quantize_multiplier(scale, multiplier, shift) -> None:
    assert int8.quantize_multiplier(scale) == (multiplier, shift)


@pytest.mark.parametrize("scale", [2.0**30, math.inf, -0.5, math.nan])
def test_quantize_multiplier_refuses(scale) -> None:
    with pytest.raises(ValueError, match="scale"):
        int8.quantize_multiplier(scale)


REQUANTIZE_BY_HAND = [
    # multiplier 2^30 is 0.5: (acc * 2^30 + 2^30) >> 31 rounds halves up, towards +infinity
    (3, 2**30, 0, 2),            # 1.5 -> 2
    (-3, 2**30, 0, -1),          # -1.5 -> -1 (CMSIS-NN's doubling high multiply)
    (4, 2**30, 0, 2),
    (-4, 2**30, 0, -2),
    # then a division by 2^right rounds halves away from zero: 0.25 = 0.5 * 2^-1
    (6, 2**30, -1, 2),           # 1.5: 3 (exact), then 3 / 2 = 1.5 -> 2
    (-6, 2**30, -1, -2),         # -1.5: -3, then -1.5 -> -2
    (5, 2**30, -1, 2),           # 1.25: 2.5 -> 3, then 1.5 -> 2 (double rounding, as CMSIS-NN)
    (-5, 2**30, -1, -1),         # -1.25: -2.5 -> -2, then -1
    (7, 2**30, -2, 1),           # 0.875: 3.5 -> 4, then 4 / 4 = 1
    (-2, 2**30, -2, 0),          # -0.25: -1, then -1 / 4 = -0.25 -> 0
    (-6, 2**30, -2, -1),         # -0.75: -3, then -0.75 -> -1
    # left shifts: 3.0 = 0.75 * 2^2
    (10, 3 * 2**29, 2, 30),
    (-10, 3 * 2**29, 2, -30),
    (2**30, 3 * 2**29, 2, 3 * 2**29 - 1),    # 2^32 saturates to 2^31 - 1 first
    (-(2**30), 3 * 2**29, 2, -3 * 2**29),    # -2^32 saturates to -2^31
    (2**31 - 1, 2**31 - 1, 0, 2**31 - 2),    # the largest product: (2^31 - 1)^2 / 2^31
    (123456, 0, 0, 0),
]


@pytest.mark.parametrize(("acc", "multiplier", "shift", "want"), REQUANTIZE_BY_HAND)
def test_requantize_by_hand(acc, multiplier, shift, want) -> None:
    assert int(int8.requantize(acc, multiplier, shift)) == want


def test_requantize_broadcasts_per_channel() -> None:
    acc = np.array([[6, 6], [-6, 3]])
    got = int8.requantize(acc, np.array([2**30, 2**30]), np.array([-1, 0]))
    assert got.tolist() == [[2, 3], [-2, 2]]


def test_requantize_is_within_one_of_the_real_product() -> None:
    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**24), 2**24, 2000)
    for scale in (1e-5, 3.7e-3, 0.37, 1.9, 37.0):
        multiplier, shift = int8.quantize_multiplier(scale)
        got = int8.requantize(acc, multiplier, shift)
        assert np.abs(got - acc * scale).max() <= 1.0, scale


@pytest.mark.parametrize(("value", "zero_point", "low", "want"), [
    (200, 0, -128, 127), (-200, 0, -128, -128), (10, -128, -128, -118), (-5, 3, 3, 3),
    (-5, 3, -128, -2), (2**31 - 1, 127, -128, 127), (-(2**31), -128, -128, -128),
])
def test_to_int8_adds_the_zero_point_and_clamps(value, zero_point, low, want) -> None:
    assert int(int8.to_int8(value, zero_point, low)) == want


def test_dense_int8_by_hand() -> None:
    x = np.int8([[-128, 127], [0, 1]])            # zero point -128: centred 0, 255; 128, 129
    kernel = np.int8([[1, -2], [3, 4]])
    bias = np.int32([10, -10])
    # sums: [0*1 + 255*3 + 10, 0*-2 + 255*4 - 10] = [775, 1010];
    #       [128*1 + 129*3 + 10, 128*-2 + 129*4 - 10] = [525, 250]; times 0.25, zero point 5
    got = int8.dense_int8(x, kernel, bias, np.int32([2**30, 2**30]), np.int32([-1, -1]), -128,
                          5)
    assert got.tolist() == [[127, 127], [127, 68]]  # 775/4 + 5 saturates; 250/4 = 62.5 -> 63


def test_conv2d_int8_pads_with_the_zero_point() -> None:
    """A 1x1 image and a "same" 3x3 kernel: only the centre weight meets the image."""
    x = np.int8([[[[7]]]])
    kernel = np.zeros((3, 3, 1, 1), dtype=np.int8)
    kernel[1, 1], kernel[0, 0] = 2, 100
    got = int8.conv2d_int8(x, kernel, np.int32([0]), np.int32([2**30]), np.int32([1]), 3, 0,
                           (1, 1), "same")
    assert got.tolist() == [[[[8]]]]  # (7 - 3) * 2 = 8, scale 1: the padding added nothing


def test_max_pool2d_int8_padding_never_wins() -> None:
    x = np.int8([[-128, -100, -90]]).reshape(1, 1, 3, 1)
    got = int8.max_pool2d_int8(x, (1, 2), (1, 2), "same")
    assert got.ravel().tolist() == [-100, -90]


@pytest.mark.parametrize(("values", "want"), [
    ([1, 2], 2),          # 1.5 -> 2
    ([-1, -2], -2),       # -1.5 -> -2
    ([0, 1], 1),          # 0.5 -> 1
    ([0, -1], -1),        # -0.5 -> -1
    ([127, 126], 127),    # 126.5 -> 127, no overflow
    ([-128, -127], -128),
    ([1, 1, 1, 2], 1),    # 1.25 -> 1
    ([2, 3, 3, 3], 3),    # 2.75 -> 3
    ([-2, -3, -3, -3], -3),
])
def test_average_pool2d_int8_rounds_halves_away(values, want) -> None:
    x = np.int8(values).reshape(1, 1, len(values), 1)
    got = int8.average_pool2d_int8(x, (1, len(values)), (1, 1), "valid")
    assert got.dtype == np.int8 and got.ravel().tolist() == [want]


def test_average_pool2d_int8_leaves_padding_out() -> None:
    x = np.int8([[3, 4, 8], [1, 1, 1], [9, 9, 9]]).reshape(1, 3, 3, 1)
    # "same" 2x2 windows, stride 2: 4 pixels, then 2 (a column of padding), 2, 1
    got = int8.average_pool2d_int8(x, (2, 2), (2, 2), "same")
    assert got.reshape(2, 2).tolist() == [[2, 5], [9, 9]]  # 9/4 = 2.25; 9/2 = 4.5 -> 5


def test_average_pool2d_int8_over_the_whole_image_per_channel() -> None:
    x = np.int8([[1, -1], [2, -2], [3, -3], [5, -5]]).reshape(1, 2, 2, 2)
    got = int8.average_pool2d_int8(x, (2, 2), (2, 2), "valid")
    assert got.ravel().tolist() == [3, -3]  # 11/4 = 2.75 -> 3


def test_relu_int8() -> None:
    assert int8.relu_int8(np.int8([-5, 3, 4, 127]), 3).tolist() == [3, 3, 4, 127]


# int8 input q -> int8 output, worked out by hand: real = 0.5 * q; tanh(0.5) * 128 = 59.15,
# tanh(1) * 128 = 97.48, tanh(1.5) * 128 = 115.86; sigmoid(0.5) * 256 = 159.35 (-128: 31),
# sigmoid(1) * 256 = 187.15 (59), sigmoid(1.5) * 256 = 209.30 (81), sigmoid(0) * 256 = 128
# (0); the ends saturate at 127 (tanh(63.5) * 128 = 128, sigmoid(63.5) * 256 - 128 = 128).
LOOKUPS_BY_HAND = {
    "tanh": {0: 0, 1: 59, -1: -59, 2: 97, -2: -97, 3: 116, -3: -116, 127: 127, -128: -128},
    "sigmoid": {0: 0, 1: 31, -1: -31, 2: 59, -2: -59, 3: 81, -3: -81, 127: 127, -128: -128},
}


@pytest.mark.parametrize("function", list(LOOKUPS_BY_HAND))
def test_lookup_table_by_hand(function: str) -> None:
    output_q = int8.LOOKUP_FUNCTIONS[function][1]
    table = int8.lookup_table(function, QParams(0.5, 0), output_q)
    assert table.dtype == np.int8 and table.shape == (256,)
    for q, want in LOOKUPS_BY_HAND[function].items():
        assert int(table[q + 128]) == want, (function, q)


def test_lookup_table_reads_the_input_zero_point() -> None:
    """QParams(0.25, 10): q = 10 is 0.0, q = 14 is 1.0 (tanh(1) * 128 = 97.48)."""
    table = int8.lookup_table("tanh", QParams(0.25, 10), QParams(1 / 128, 0))
    assert (int(table[10 + 128]), int(table[14 + 128]), int(table[6 + 128])) == (0, 97, -97)


def test_lookup_output_scales_are_tflites() -> None:
    assert int8.LOOKUP_FUNCTIONS["tanh"][1] == QParams(1 / 128, 0)
    assert int8.LOOKUP_FUNCTIONS["sigmoid"][1] == QParams(1 / 256, -128)


@pytest.mark.parametrize("function", list(int8.LOOKUP_FUNCTIONS))
def test_lookup_tables_never_decrease(function: str) -> None:
    """What the C's fused convolution + table + max pool relies on: the greatest sum gives
    the greatest table entry. Input scales from tiny to huge, every zero point."""
    rng = np.random.default_rng(2)
    output_q = int8.LOOKUP_FUNCTIONS[function][1]
    for scale, zero_point in zip(10.0 ** rng.uniform(-4, 2, 200), rng.integers(-128, 128, 200),
                                 strict=True):
        table = int8.lookup_table(function, QParams(float(np.float32(scale)), int(zero_point)),
                                  output_q).astype(int)
        assert (np.diff(table) >= 0).all(), (scale, zero_point)


def test_lookup_int8() -> None:
    table = np.arange(127, -129, -1).astype(np.int8)  # q -> -1 - q
    got = int8.lookup_int8(np.int8([[-128, 0], [5, 127]]), table)
    assert got.dtype == np.int8 and got.tolist() == [[127, -1], [-6, -128]]


def test_exact_matmul() -> None:
    a = np.array([[255.0, -255.0, 255.0]])
    b = np.int8([[127], [-127], [127]])
    assert int8.exact_matmul(a, b).tolist() == [[3 * 255 * 127]]


# ---- lowering: what the layers become ------------------------------------------------------

def test_convnet_plus_folds_batchnorm_and_fuses_relu() -> None:
    q = case("convnet-plus").q
    assert [layer.kind for layer in q.layers] == [
        "conv2d", "conv2d", "max_pool2d", "conv2d", "max_pool2d", "dense"]
    first = q.layers[0]
    assert first.description.startswith("layers 1-3: Conv2D(")
    assert "BatchNormalization" in first.description and "Activation('relu')" in first.description
    assert all(layer.output_min == layer.output_q.zero_point == -128 for layer in q.layers[:4]
               if layer.kind == "conv2d")  # calibrated on ReLU outputs: 0 is the lowest, -128
    assert q.exit_activation == "softmax" and q.exit_group == 10


def test_folded_twin_follows_the_float_model() -> None:
    """Random BatchNormalization statistics and biases: the folded int8 network still gives
    outputs close to the float model's (a fold gone wrong is far off)."""
    for name in ("convnet-plus", "odd-convnet"):
        c = case(name)
        got, want = c.q.predict(c.x), c.model.predict(c.x)
        assert np.abs(got - want).max() < 0.1, name
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95, name


def test_odd_pools_lowering() -> None:
    q = case("odd-pools").q
    assert [layer.kind for layer in q.layers] == [
        "max_pool2d", "conv2d", "max_pool2d", "conv2d", "relu", "dense"]
    relu = q.layers[4]
    assert relu.input_q == relu.output_q and relu.input_q.zero_point > -128  # after a linear conv
    assert q.exit_activation == "linear"


def test_average_pools_quantise_and_follow_the_float() -> None:
    """AveragePooling2D and GlobalAveragePooling2D lower through the table and follow their
    float selves."""
    steps, input_shape = pooling_steps()
    x = np.random.default_rng(4).random((300, math.prod(input_shape)), dtype=np.float32)
    q = int8.quantize_steps(steps, input_shape, x)
    assert [layer.kind for layer in q.layers] == [
        "conv2d", "average_pool2d", "conv2d", "average_pool2d", "average_pool2d", "dense"]
    assert q.layers[4].window == (2, 2)
    float_out = x
    for op in int8.lower(steps).ops:
        float_out = op.forward(float_out)
    want = mn.reference.softmax_forward(None, float_out.reshape(len(x), -1))
    assert np.abs(q.predict(x) - want).max() < 0.05


def test_lenet5_lowers_its_tanh_to_tables() -> None:
    """Each tanh after its Dense or Conv2D: the layer's output takes its range (calibrated
    before the tanh), the table's TFLite's (1/128, 0); the pools keep that."""
    q = case("lenet5").q
    assert [layer.kind for layer in q.layers] == [
        "conv2d", "lookup", "average_pool2d", "conv2d", "lookup", "average_pool2d",
        "dense", "lookup", "dense", "lookup", "dense"]
    for affine, lookup in zip(q.layers[:-1], q.layers[1:], strict=True):
        if lookup.kind == "lookup":
            assert lookup.function == "tanh" and lookup.index == affine.index
            assert lookup.input_q == affine.output_q != QParams(1 / 128, 0)
            assert lookup.output_q == QParams(1 / 128, 0)
            assert np.array_equal(lookup.table, int8.lookup_table("tanh", affine.output_q,
                                                                  lookup.output_q))
            assert lookup.description == f"the tanh of {affine.description}"
    assert q.layers[2].input_q == q.layers[2].output_q == QParams(1 / 128, 0)
    assert q.exit_activation == "softmax"
    # int8 kernels, int32 biases, multipliers and shifts per output channel, four tables
    assert q.weight_bytes == 61470 + 12 * (6 + 16 + 120 + 84 + 10) + 4 * 256


def test_odd_lookups_lowering() -> None:
    """A sigmoid after a folded BatchNormalization, a tanh on its own, a sigmoid Dense with a
    ReLU after it: tables where the network computes on, the last tanh in float."""
    q = case("odd-lookups").q
    assert [(layer.kind, layer.function) for layer in q.layers] == [
        ("conv2d", ""), ("lookup", "sigmoid"), ("max_pool2d", ""), ("conv2d", ""),
        ("lookup", "tanh"), ("average_pool2d", ""), ("conv2d", ""), ("lookup", "sigmoid"),
        ("average_pool2d", ""), ("lookup", "tanh"), ("dense", ""), ("lookup", "sigmoid"),
        ("relu", ""), ("dense", ""), ("lookup", "tanh"), ("dense", "")]
    assert "BatchNormalization" in q.layers[0].description
    assert q.layers[1].description == "the sigmoid of layer 2: Activation('sigmoid')"
    assert q.layers[12].input_q == q.layers[12].output_q == QParams(1 / 256, -128)
    assert q.exit_activation == "tanh" and q.exit_group == 6


@pytest.mark.parametrize(("layers", "kinds", "exit_activation"), [
    pytest.param([mn.Dense(8, activation="sigmoid"), mn.Dense(10, activation="softmax")],
                 ["dense", "lookup", "dense"], "softmax", id="hidden-sigmoid"),
    pytest.param([mn.Dense(8), mn.Activation("sigmoid"), mn.Activation("relu")],
                 ["dense", "lookup", "relu"], "linear", id="relu-after-sigmoid"),
    pytest.param([mn.Dense(8, activation="tanh"), mn.Activation("tanh")],
                 ["dense", "lookup"], "tanh", id="tanh-after-tanh"),
    pytest.param([mn.Dense(10, activation="tanh")], ["dense"], "tanh", id="tanh-exit"),
    pytest.param([mn.Activation("tanh"), mn.Dense(10)], ["lookup", "dense"], "linear",
                 id="tanh-first"),
])
def test_hidden_sigmoid_and_tanh_are_tables(layers, kinds, exit_activation) -> None:
    """A sigmoid or tanh with layers that compute after it is a table; the last one runs in
    float; and the twin follows the float model."""
    model = mn.Model(layers, input_dim=784, seed=1)
    x = images(784, train=True)
    q = mn.quantize(model, x)
    assert [layer.kind for layer in q.layers] == kinds
    assert q.exit_activation == exit_activation
    assert np.abs(q.predict(x) - model.predict(x)).max() < 0.1


def test_weights_are_symmetric_per_channel() -> None:
    layer = case("cross-entropy").q.layers[0]
    kernel = layer.kernel.astype(int)
    assert layer.kernel.dtype == np.int8 and kernel.min() >= -127
    assert (np.abs(kernel).max(axis=0) == 127).all()  # each channel's largest weight: 127


def test_summary_and_sizes() -> None:
    q = case("convnet").q
    lines = []
    assert q.summary(print_fn=lines.append) is None
    text = "\n".join(lines)
    assert "calibrated on 1000 rows" in text and "then softmax in float" in text
    assert q.weight_bytes == 288 + 18432 + 16000 + 12 * (32 + 64 + 10)
    assert q.float_weight_bytes == 4 * 34826


# ---- the twin against the float model ------------------------------------------------------

def needs_mnist() -> None:
    if mnist() is None:
        pytest.skip("set MNISTNET_DATA to the MNIST folder: these tests train on it")


# The MSE presets learn slowly: after one epoch they are near 50% accurate, their logits
# crowded, and int8 ties the top two on 2-4% of the images (the twin then agrees on 97-99%);
# after 10 epochs (a third of their recipe, seconds) it agrees on 99.5%.
EPOCHS = {"perceptron": 10, "hidden-relu": 10, "cross-entropy": 1, "convnet": 1, "lenet5": 1}


@pytest.mark.parametrize("preset", list(EPOCHS))
def test_twin_agrees_with_the_float_model(preset: str) -> None:
    """The preset trained with its recipe (EPOCHS), quantised on 1,000 training images: on
    the 10,000 test images the int8 twin predicts the float model's class for >= 99% of
    them, and its accuracy is within 0.3 points."""
    needs_mnist()
    (x_train, _), (x_test, y_test) = mnist()
    model = trained(preset, EPOCHS[preset])
    q = mn.quantize(model, int8.calibration_sample(x_train))
    got, want = q.predict(x_test).argmax(1), model.predict(x_test).argmax(1)
    agreement = (got == want).mean()
    drop = (want == y_test).mean() - (got == y_test).mean()
    assert agreement >= 0.99, f"{preset}: the twin agrees on {agreement:.2%} only"
    assert drop <= 0.003, f"{preset}: int8 loses {100 * drop:.2f} points"


def test_predict_int8_matches_predict() -> None:
    """predict = dequantise(predict_int8(quantize_input(x))) with the exit in float."""
    needs_mnist()
    c = trained_case("cross-entropy")
    q_out = c.q.predict_int8(c.x_int8)
    assert q_out.dtype == np.int8 and q_out.shape == (len(c.x), 10)
    probs = mn.reference.softmax_forward(None, int8.dequantize_values(q_out, c.q.output_q))
    assert np.array_equal(c.q.predict(c.x), probs)
    assert np.array_equal(q_out.argmax(1), probs.argmax(1))


def test_calibration_sample_is_seeded_and_ordered() -> None:
    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    a, b = int8.calibration_sample(x, 10, seed=1), int8.calibration_sample(x, 10, seed=1)
    assert np.array_equal(a, b) and len(a) == 10
    assert (np.diff(a[:, 0]) > 0).all()
    with pytest.raises(ValueError, match="asked for 26 calibration rows of 25"):
        int8.calibration_sample(x, 26)


# ---- errors --------------------------------------------------------------------------------

def test_every_kind_of_the_table_lowers_to_int8(monkeypatch) -> None:
    """The quantiser's table covers every layer kind; a kind it lacked would be refused by
    name, never skipped."""
    from mnistnet.kinds import KINDS

    assert set(int8.LOWERINGS) == {kind.name for kind in KINDS}
    monkeypatch.delitem(int8.LOWERINGS, "MaxPool2D")
    model = mn.Model([mn.Conv2D(2, 3), mn.MaxPool2D(2), mn.Flatten(), mn.Dense(10)],
                     input_shape=(28, 28, 1))
    x = np.random.default_rng(0).random((200, model.input_dim), dtype=np.float32)
    with pytest.raises(QuantizationError, match=r"layer 1 \(MaxPool2D\) to int8: no int8 code "
                                                r"for MaxPool2D layers \(supported: Activation, "):
        mn.quantize(model, x)


@pytest.mark.parametrize(("layers", "input_shape", "message"), [
    pytest.param([mn.Dense(8, activation="softmax"), mn.Dense(10, activation="softmax")],
                 (784,), r"layer 1 \(Dense\) to int8: it follows layer 0's softmax, which "
                         r"int8 models apply in float at the very end only",
                 id="hidden-softmax"),
    pytest.param([mn.Conv2D(4, 3, activation="softmax"), mn.Flatten(), mn.Dense(10)],
                 (28, 28, 1), r"layer 2 \(Dense\) to int8: it follows layer 0's softmax",
                 id="hidden-softmax-conv"),
    pytest.param([mn.Dense(8), mn.Activation("softmax"), mn.Activation("tanh")], (784,),
                 r"layer 2 \(Activation\) to int8: it follows layer 1's softmax",
                 id="tanh-after-softmax"),
    pytest.param([mn.Dense(8, activation="tanh"), mn.BatchNormalization(), mn.Dense(10)],
                 (784,), r"layer 1 \(BatchNormalization\) to int8: .*before any ReLU",
                 id="bn-after-tanh"),
    pytest.param([mn.MaxPool2D(2), mn.BatchNormalization(), mn.Flatten(), mn.Dense(10)],
                 (28, 28, 1), r"layer 1 \(BatchNormalization\) to int8: .*directly follows",
                 id="batchnorm-after-pool"),
    pytest.param([mn.Conv2D(4, 3, activation="relu"), mn.BatchNormalization(), mn.Flatten(),
                  mn.Dense(10)], (28, 28, 1),
                 r"layer 1 \(BatchNormalization\) to int8: .*before any ReLU", id="bn-after-relu"),
    pytest.param([mn.Conv2D(4, 3), mn.Flatten(), mn.BatchNormalization(), mn.Dense(10)],
                 (28, 28, 1), r"layer 2 \(BatchNormalization\)", id="bn-after-flatten"),
])
def test_unquantisable_models_are_refused(layers, input_shape, message) -> None:
    model = mn.Model(layers, input_shape=input_shape)
    x = np.random.default_rng(0).random((200, model.input_dim), dtype=np.float32)
    with pytest.raises(QuantizationError, match=message):
        mn.quantize(model, x)
    with pytest.raises(QuantizationError, match=message):
        int8.check_quantizable(model)  # the same, before any calibration


def test_check_quantizable_passes_what_quantises() -> None:
    for name in ("lenet5", "odd-lookups", "convnet-plus"):
        int8.check_quantizable(case(name).model)


def test_an_unknown_activation_is_refused() -> None:
    model = mn.Model([mn.Dense(10)], input_dim=784)
    model.layers[0].activation = "swish"  # what a later engine might add: never quantised as linear
    with pytest.raises(QuantizationError, match=r"layer 0 \(Dense\).*'swish' \(supported: linear, "
                                                r"relu, tanh, sigmoid; softmax on the last layer"):
        mn.quantize(model, images(784, train=True))


@pytest.mark.parametrize(("x", "error", "message"), [
    pytest.param(np.zeros((200, 783), np.float32), ValueError,
                 "x_calibration has 783 columns but the model's input_dim is 784", id="columns"),
    pytest.param(np.zeros((200, 28, 28), np.float32), ValueError,
                 r"x_calibration must be 2-D \(n, 784\)", id="images-for-a-dense-net"),
    pytest.param(np.zeros(784, np.float32), ValueError, "x_calibration must be 2-D",
                 id="one-row-1d"),
    pytest.param(np.zeros((99, 784), np.float32), QuantizationError,
                 r"x_calibration has 99 rows; .* at least 100 \(default 1000\)", id="too-few"),
    pytest.param(np.zeros((200, 784), np.uint8), TypeError, "integer dtype uint8",
                 id="integers"),
    pytest.param(np.full((200, 784), np.nan, np.float32), ValueError, "NaN or Inf", id="nan"),
])
def test_bad_calibration_data_is_refused(x, error, message) -> None:
    with pytest.raises(error, match=message):
        mn.quantize(case("cross-entropy").model, x)


def test_calibration_images_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"does not fit the model's input_shape \(28, 28, 1\)"):
        mn.quantize(case("convnet").model, np.zeros((200, 27, 28), np.float32))


def test_predict_int8_refuses_floats_and_wrong_shapes() -> None:
    q = case("perceptron").q
    with pytest.raises(TypeError, match="int8 inputs, got float32"):
        q.predict_int8(np.zeros((2, 784), np.float32))
    with pytest.raises(ValueError, match=r"\(n, 784\).*got \(2, 783\)"):
        q.predict_int8(np.zeros((2, 783), np.int8))
