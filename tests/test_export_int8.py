"""mnistnet.export_int8 and export_int8_onnx: the generated int8 C, compiled for this machine
with -std=c99 -Wall -Wextra -Werror -pedantic (and once under ASan + UBSan), gives the twin's
int8 outputs bit for bit on 1,000 images, for every preset, for odd architectures, for
average pooling and for hidden tanh and sigmoid (tables, fused with the layers around them
or not); its float entry point gives the twin's predict; it has no allocation, no
writable global, no float outside <name>_predict; its header's sizes are right; the ONNX QDQ
graph runs in onnxruntime within one quantisation step of the twin (or a few, said where);
`mnistnet export --int8` writes what mn.quantize writes; and the errors a user can cause.

Inputs: see int8_models. Without a C compiler (or onnx and onnxruntime) these tests skip;
MNISTNET_REQUIRE=compiler (onnx) turns the skips into failures (see test_export).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from int8_models import (
    MODELS,
    Case,
    case,
    mnist,
    parse_driver_output,
    pooling_steps,
    run,
    trained_case,
    write_driver,
    write_inputs,
)
from test_cli import write_dataset
from test_export import (
    C_FLAGS,
    CXX_FLAGS,
    SANITIZE_FLAGS,
    WRITABLE_DATA_SYMBOLS,
    build,
    check_export_error,
    compiler,
    export_main,
    nm,
    probe,
    skip_or_fail,
)
from test_int8 import REQUANTIZE_BY_HAND

import mnistnet as mn
from mnistnet import export, export_int8, int8
from mnistnet.cli import export as export_cli

FLOAT_TOLERANCE = 1e-6  # the float entry point against q.predict: expf and libm may differ


@pytest.fixture(scope="module")
def cc(tmp_path_factory) -> list[str]:
    return probe(compiler("CC", "cc", "CC"), C_FLAGS, tmp_path_factory.mktemp("cc"),
                 "no working C compiler")


def exported(c: Case, folder: Path, flags: list[str], cc: list[str]) -> Path:
    """The case's C and the driver built in folder with flags; returns the program."""
    _, source = c.q.export_c(folder, c.c_name)
    return build([*cc, *flags], [source, write_driver(folder, c.c_name)], folder / "predict")


def run_c(c: Case, program: Path, env: dict[str, str] | None = None,
          x_int8: np.ndarray | None = None,
          x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(int8 outputs of <name>_predict_int8, float outputs of <name>_predict) on the case's
    inputs (or those given)."""
    x_int8 = c.x_int8 if x_int8 is None else x_int8
    x = c.x if x is None else x
    write_inputs(program.parent, x_int8, x)
    return parse_driver_output(run([str(program)], program.parent, env), c.q.n_outputs)


def assert_bit_exact(c: Case, got_int8: np.ndarray, got_float: np.ndarray,
                     x: np.ndarray | None = None) -> None:
    want = c.q.predict_int8(c.x_int8)
    assert got_int8.shape == want.shape
    assert want.astype(int).std(axis=0).min() > 0, "the outputs barely vary: a weak check"
    mismatches = int((got_int8 != want).sum())
    assert mismatches == 0, f"{c.name}: {mismatches} int8 outputs differ from the twin's"
    error = np.abs(got_float - c.q.predict(c.x if x is None else x)).max()
    assert error <= FLOAT_TOLERANCE, f"{c.name}: max |C predict - q.predict| = {error:.3g}"


CASES = [*MODELS, "trained-convnet", "trained-lenet5"]


def get_case(name: str) -> Case:
    if name.startswith("trained-"):
        if mnist() is None:
            pytest.skip("set MNISTNET_DATA to the MNIST folder: this case trains on it")
        return trained_case(name.removeprefix("trained-"))
    return case(name)


@pytest.mark.parametrize("name", CASES)
def test_c_matches_the_twin(name: str, cc, tmp_path: Path) -> None:
    c = get_case(name)
    assert_bit_exact(c, *run_c(c, exported(c, tmp_path, C_FLAGS, cc)))


def test_average_pools_in_c_match_the_twin(cc, tmp_path: Path) -> None:
    c = pools_case()
    program = exported(c, tmp_path, C_FLAGS, cc)
    assert_bit_exact(c, *run_c(c, program))
    assert "average_pool2d(" in (tmp_path / "pools.c").read_text()


def test_lenet5_runs_in_two_pooled_buffers(tmp_path: Path) -> None:
    """Each tanh convolution runs with its table and its average pool as one function: the
    layer outputs need 14x14x6 and 5x5x16 bytes, no convolution output is kept."""
    q = case("lenet5").q
    assert export_int8.c_sizes(q)["scratch_bytes"] == 14 * 14 * 6 + 5 * 5 * 16
    _, source = q.export_c(tmp_path, "lenet")
    calls = re.findall(r"^    (layer\w+)\(", source.read_text(), re.MULTILINE)
    assert calls == ["layer0_conv2d_average_pool2d", "layer2_conv2d_average_pool2d",
                     "layer5_dense", "layer6_dense", "layer7_dense"]
    assert len(re.findall(r"static const int8_t layer\d_tanh_table\[256\]",
                          source.read_text())) == 4


def test_a_decreasing_table_does_not_fuse_with_a_max_pool(cc, tmp_path: Path) -> None:
    """The fused convolution + table + max pool takes the table of the greatest sum: right
    for tables that never decrease (tanh's and sigmoid's), wrong for others, which run
    unfused (here odd-lookups' sigmoid table reversed)."""
    c = case("odd-lookups")
    layers = list(c.q.layers)
    assert [layer.kind for layer in layers[:3]] == ["conv2d", "lookup", "max_pool2d"]
    layers[1] = dataclasses.replace(layers[1], table=layers[1].table[::-1].copy())
    reversed_case = Case.__new__(Case)
    reversed_case.__dict__.update(c.__dict__, name="reversed-table", c_name="reversed_table",
                                  q=dataclasses.replace(c.q, layers=tuple(layers)))
    program = exported(reversed_case, tmp_path, C_FLAGS, cc)
    text = (tmp_path / "reversed_table.c").read_text()
    assert "layer0_conv2d_max_pool2d(" not in text and "layer0_conv2d(input, buffer0);" in text
    assert_bit_exact(reversed_case, *run_c(reversed_case, program))


REQUANTIZE_DRIVER = """\
/* Reads (sum, multiplier, shift, zero point, low) int32 rows from argv[1], writes
 * requantize(sum, multiplier, shift) and to_int8 of it as two int32 to argv[2]. */
#include <stdint.h>
#include <stdio.h>

HELPERS
int main(int argc, char **argv)
{
    int32_t row[5], out[2];
    FILE *in, *dst;
    if (argc != 3 || (in = fopen(argv[1], "rb")) == NULL || (dst = fopen(argv[2], "wb")) == NULL)
        return 2;
    while (fread(row, sizeof row[0], 5, in) == 5) {
        out[0] = requantize(row[0], row[1], row[2]);
        out[1] = to_int8(out[0], row[3], row[4]);
        fwrite(out, sizeof out[0], 2, dst);
    }
    fclose(in);
    return fclose(dst) != 0;
}
"""


def requantize_cases(n: int = 50_000) -> np.ndarray:
    """(sum, multiplier, shift, zero point, low) rows: the hand-worked ones, then random
    sums of every magnitude up to int32's limits with multipliers of every scale (shifts
    -31 to 30: the left shifts saturate), and 0."""
    rng = np.random.default_rng(8)
    by_hand = np.array([row[:3] for row in REQUANTIZE_BY_HAND], dtype=np.int64)
    magnitude = rng.integers(0, 32, n)
    sums = np.clip(rng.choice([-1, 1], n) * (rng.integers(0, 2**31, n) >> (31 - magnitude)),
                   -(2**31), 2**31 - 1)
    multipliers = np.where(rng.random(n) < 0.02, 0, rng.integers(2**30, 2**31, n))
    shifts = rng.integers(-31, 31, n)
    rows = np.concatenate([by_hand, np.stack([sums, multipliers, shifts], axis=1)])
    zero_points = rng.integers(-128, 128, len(rows))
    lows = np.where(rng.random(len(rows)) < 0.5, -128, zero_points)
    return np.column_stack([rows, zero_points, lows]).astype(np.int32)


def test_c_requantize_matches_the_twin_under_sanitizers(cc, tmp_path: Path) -> None:
    """The C helpers on their own, on every path (left shifts that saturate, right shifts up
    to 31, multiplier 0), under UBSan: no overflow, and the twin's values."""
    probe(cc, SANITIZE_FLAGS, tmp_path, "no AddressSanitizer/UBSan")
    source = tmp_path / "requantize.c"
    source.write_text(REQUANTIZE_DRIVER.replace("HELPERS", export_int8.C_REQUANTIZE))
    program = build([*cc, *SANITIZE_FLAGS, "-Wall", "-Wextra", "-Werror", "-pedantic"],
                    [source], tmp_path / "requantize")
    rows = requantize_cases()
    rows.tofile(tmp_path / "rows.i32")
    env = {**os.environ, "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    run([str(program), "rows.i32", "out.i32"], tmp_path, env)
    got = np.fromfile(tmp_path / "out.i32", dtype=np.int32).reshape(-1, 2)
    sums, multipliers, shifts, zero_points, lows = rows.astype(np.int64).T
    want = int8.requantize(sums, multipliers, shifts)
    assert np.array_equal(got[:, 0], want)
    assert np.array_equal(got[:, 1], int8.to_int8(want, zero_points, lows))
    left = np.maximum(shifts, 0)
    assert (np.abs(sums) >= 2 ** (31 - left))[shifts > 0].any(), "no left shift saturates"
    assert (shifts == -31).any() and (multipliers == 0).any()


def test_c_compiles_as_cxx(cc, tmp_path_factory, tmp_path: Path) -> None:
    """The source compiles as C++ too; the header's extern "C" lets C++ call the C build."""
    cxx = probe(compiler("CXX", "c++"), CXX_FLAGS, tmp_path_factory.mktemp("cxx"),
                "no working C++ compiler")
    c = case("odd-convnet")
    _, source = c.q.export_c(tmp_path, c.c_name)
    driver = build([*cxx, *CXX_FLAGS, "-c"], [write_driver(tmp_path, c.c_name)],
                   tmp_path / "driver.o")
    for obj in (build([*cxx, *CXX_FLAGS, "-c"], [source], tmp_path / "model_cxx.o"),
                build([*cc, *C_FLAGS, "-c"], [source], tmp_path / "model_c.o")):
        program = build([*cxx], [driver, obj], tmp_path / f"predict_{obj.stem}")
        assert_bit_exact(c, *run_c(c, program))


@pytest.mark.parametrize("name", ["odd-convnet", "odd-pools", "odd-lookups"])
def test_c_runs_clean_under_sanitizers(name: str, cc, tmp_path: Path) -> None:
    c = case(name)
    probe(cc, SANITIZE_FLAGS, tmp_path, "no AddressSanitizer/UBSan")
    program = exported(c, tmp_path, [*SANITIZE_FLAGS, "-Wall", "-Wextra", "-Werror"], cc)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    assert_bit_exact(c, *run_c(c, program, env))


def dead_relu_case() -> Case:
    """ReLU layers whose outputs are 0 on every calibration image (biases -50), a convolution
    (fused with its pool) and a Dense: their tensors get scale 1 and zero point 0, so the
    fused ReLUs clamp at 0, not -128."""
    model = mn.Model([mn.Conv2D(4, 3, activation="relu"), mn.MaxPool2D(2), mn.Flatten(),
                      mn.Dense(16, activation="relu"), mn.Dense(10, activation="softmax")],
                     input_shape=(28, 28, 1), seed=3)
    weights = model.get_weights()
    weights[1][:], weights[3][:] = -50.0, -50.0
    weights[5][:] = np.linspace(-1, 1, 10, dtype=np.float32)
    model.set_weights(weights)
    c = Case("dead-relu", model)
    for layer in (c.q.layers[0], c.q.layers[2]):
        assert layer.output_q == int8.QParams(1.0, 0) and layer.output_min == 0
    return c


def test_a_dead_relu_layer_exports(cc, ort, tmp_path: Path) -> None:
    c = dead_relu_case()
    # Images brighter than any calibration image wake some units up: they clamp at 0.
    c.x = np.concatenate([c.x, 60 * c.x[:100]])
    c.x_int8 = c.q.quantize_input(c.x)
    got_int8, _ = run_c(c, exported(c, tmp_path, C_FLAGS, cc))
    assert np.array_equal(got_int8, c.q.predict_int8(c.x_int8))
    session = ort.InferenceSession(str(c.q.export_onnx(tmp_path / "model.onnx")),
                                   providers=["CPUExecutionProvider"])
    (onnx_int8,) = session.run(["output_int8"], {"input": c.x.reshape(-1, 28, 28, 1)})
    assert np.abs(onnx_int8.astype(int) - c.q.predict_int8(c.x_int8)).max() <= 1


def test_the_float_input_is_quantised_exactly(cc, tmp_path: Path) -> None:
    """odd-pools ends linear: its float outputs are exactly the dequantised int8, so they
    show the C's input quantisation bit for bit, here on values that round at .5, saturate,
    and NaN."""
    c = case("odd-pools")
    scale, zero_point = c.q.input_q.scale, c.q.input_q.zero_point
    rng = np.random.default_rng(7)
    steps = rng.integers(-300, 300, (200, c.q.input_dim)) + rng.choice([0.0, 0.5, -0.5, 0.25],
                                                                        (200, c.q.input_dim))
    x = (np.float32(scale) * (steps - zero_point)).astype(np.float32)
    x[0, :5] = [np.nan, np.inf, -np.inf, 1e30, -1e30]
    x_int8 = int8.quantize_values(x, c.q.input_q)
    want = c.q.dequantize_output(c.q.predict_int8(x_int8))
    got_int8, got_float = run_c(c, exported(c, tmp_path, C_FLAGS, cc), x_int8=x_int8, x=x)
    assert np.array_equal(got_int8, c.q.predict_int8(x_int8))
    assert got_float.tobytes() == want.tobytes()


def symbols(obj: Path) -> dict[str, str]:
    """nm's symbols of an object file: name -> kind letter."""
    lines = subprocess.run([nm(), str(obj)], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return {fields[-1]: fields[-2] for fields in map(str.split, lines) if len(fields) >= 2}


C_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
FLOAT_PART = re.compile(r"#ifndef MNISTNET_NO_FLOAT\n.*?#endif /\* MNISTNET_NO_FLOAT \*/\n",
                        re.DOTALL)


@pytest.mark.parametrize("name", ["convnet", "odd-convnet", "hidden-relu", "odd-lookups"])
def test_c_has_no_allocation_no_writable_global_and_no_float_in_the_layers(
        name: str, cc, tmp_path: Path) -> None:
    c = case(name)
    _, source = c.q.export_c(tmp_path, c.c_name)
    text = source.read_text()
    assert not re.search(r"\b(malloc|calloc|realloc|free|alloca)\b", text)
    integer_part = C_COMMENT.sub("", FLOAT_PART.sub("", text))  # comments may say "tanh"
    assert "#ifndef MNISTNET_NO_FLOAT" in text
    assert not re.search(r"\b(float|double|expf|exp|tanhf|tanh)\b", integer_part), (
        "float outside the #ifndef MNISTNET_NO_FLOAT parts")
    top_level = [line for line in text.splitlines() if re.match(r"(static|int|float) ", line)]
    for line in top_level:
        assert re.match(r"static const |static (void|int8_t|int32_t|int64_t) \w+\(|"
                        r"int \w+_predict(_int8)?\(", line), line
    predict, predict_int8 = f"{c.c_name}_predict", f"{c.c_name}_predict_int8"
    for flags, public in (([], [predict, predict_int8]),
                          (["-DMNISTNET_NO_FLOAT"], [predict_int8])):
        kinds = symbols(build([*cc, *C_FLAGS, *flags, "-c"], [source], tmp_path / "model.o"))
        writable = {s: kind for s, kind in kinds.items() if kind in WRITABLE_DATA_SYMBOLS}
        assert writable == {}, writable
        assert sorted(s for s, kind in kinds.items() if kind.isupper() and kind != "U") == public
        undefined = {s for s, kind in kinds.items() if kind == "U"}
        libm = export_int8.LIBM.get(c.q.exit_activation)  # the exit's function
        assert libm is not None and (libm in undefined) == (not flags)
        assert not undefined & {"malloc", "calloc", "realloc", "free"}, undefined


def test_the_integer_build_runs_without_float(cc, tmp_path: Path) -> None:
    c = case("cross-entropy")
    got_int8, got_float = run_c(c, exported(c, tmp_path, [*C_FLAGS, "-DMNISTNET_NO_FLOAT"], cc))
    assert got_float.size == 0
    assert np.array_equal(got_int8, c.q.predict_int8(c.x_int8))


def test_header_constants(tmp_path: Path) -> None:
    c = case("convnet")
    header, source = c.q.export_c(tmp_path, "digits")
    text = header.read_text()
    q = c.q
    for line in ("#define DIGITS_INPUT_SIZE 784", "#define DIGITS_OUTPUT_SIZE 10",
                 f"#define DIGITS_INPUT_SCALE {export.c_float(q.input_q.scale)}",
                 "#define DIGITS_INPUT_ZERO_POINT (-128)",
                 f"#define DIGITS_OUTPUT_ZERO_POINT ({q.output_q.zero_point})",
                 f"#define DIGITS_WEIGHTS_BYTES {q.weight_bytes}",
                 # conv + pool fused: 13x13x32 and 5x5x64 int8 buffers only
                 "#define DIGITS_SCRATCH_BYTES 7008",
                 f"#define DIGITS_PREDICT_SCRATCH_BYTES {7008 + 784 + 10}",
                 "int digits_predict_int8(const int8_t *input, int8_t *output);",
                 "int digits_predict(const float *input, float *output);"):
        assert line in text, line
    assert export_int8.c_sizes(q) == {"weights_bytes": q.weight_bytes, "scratch_bytes": 7008,
                                      "predict_scratch_bytes": 7802}
    comment = source.read_text().split("*/", 1)[0]
    for line in q.about:
        assert line in comment
    assert 'extern "C"' in text


# ---- ONNX (QDQ) ----------------------------------------------------------------------------

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "Gemm", "Conv", "MaxPool", "AveragePool",
           "Relu", "Tanh", "Sigmoid", "Transpose", "Flatten", "Softmax", "Reshape", "Identity"}


@pytest.fixture(scope="module")
def ort():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        skip_or_fail("onnx", f"the ONNX tests need onnx and onnxruntime: {exc}")
    return onnxruntime


def pools_case() -> Case:
    """The average pools (int8_models.average_pools) as a Case of steps."""
    steps, input_shape = pooling_steps()
    dim = math.prod(input_shape)
    rng = np.random.default_rng(5)
    c = Case.__new__(Case)  # a Case without a Model: the layers come as steps
    c.name = c.c_name = "pools"
    c.q = int8.quantize_steps(steps, input_shape, rng.random((300, dim), dtype=np.float32))
    c.x = rng.random((1000, dim), dtype=np.float32)
    c.x_int8 = c.q.quantize_input(c.x)
    return c


# The largest difference from the twin's int8 outputs, in quantisation steps. A step off in
# one layer can be worth more than a step of the next: the pools' three average pools (ONNX
# averages in float) feed a Dense whose output range is narrow, and 1.5% of its outputs end
# two steps off. A table's steep middle does the same: odd-lookups' first sigmoid reads steps
# of 0.057 and writes steps of 1/256, so where its input is a step off (the convolution's
# requantisation rounds differently), its output is up to 4 steps off (0.25 * 0.057 * 256 =
# 3.7); the trained lenet5 ends within 2.
ONNX_STEPS = {"perceptron": 1, "cross-entropy": 1, "convnet": 1, "convnet-plus": 1,
              "odd-convnet": 1, "odd-pools": 1, "pools": 2, "odd-lookups": 4,
              "trained-lenet5": 2}


@pytest.mark.parametrize("name", list(ONNX_STEPS))
def test_onnx_qdq_is_within_a_step_of_the_twin(name: str, ort, tmp_path: Path) -> None:
    """onnxruntime rounds and requantises its own way (halves to even, float multipliers):
    its int8 outputs stay within ONNX_STEPS quantisation steps of the twin's on every output
    (most are equal), and its float output is the exit activation of those."""
    import onnx

    c = pools_case() if name == "pools" else get_case(name)
    path = c.q.export_onnx(tmp_path / "model.onnx")
    proto = onnx.load(path)
    assert {node.op_type for node in proto.graph.node} <= QDQ_OPS
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got, got_int8 = session.run(["output", "output_int8"],
                                {"input": c.x.reshape(-1, *c.q.input_shape)})
    want = c.q.predict_int8(c.x_int8)
    assert got_int8.dtype == np.int8 and got_int8.shape == want.shape
    steps = np.abs(got_int8.astype(int) - want)
    assert steps.max() <= ONNX_STEPS[name], f"{name}: onnxruntime is {steps.max()} steps off"
    assert (steps > 0).mean() < 0.35, f"{name}: {(steps > 0).mean():.1%} of the outputs differ"
    assert np.abs(got - c.q.dequantize_output(got_int8)).max() <= 1e-6


def test_onnx_qdq_needs_the_onnx_extra(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=re.escape('pip install "mnistnet[onnx]"')):
        case("perceptron").q.export_onnx(tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


# ---- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["3d", "my-model", "int", "_Private", ""])
def test_c_refuses_a_bad_name(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="C name"):
        case("perceptron").q.export_c(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_c_creates_its_folder(tmp_path: Path) -> None:
    header, source = case("perceptron").q.export_c(tmp_path / "new" / "firmware")
    assert header.is_file() and source.is_file() and header.parent == tmp_path / "new/firmware"


def test_c_write_is_atomic(monkeypatch, tmp_path: Path) -> None:
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        case("perceptron").q.export_c(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_export_int8_c_checks_name_and_folder_before_quantising(tmp_path: Path) -> None:
    model = case("perceptron").model
    with pytest.raises(ValueError, match="C name 'int'"):
        int8.export_int8_c(model, tmp_path, None, "int")
    (tmp_path / "notes").write_text("hello\n")
    with pytest.raises(NotADirectoryError, match="notes is a file, not a folder"):
        int8.export_int8_c(model, tmp_path / "notes" / "firmware", None)


def test_export_int8_c_writes_the_files(tmp_path: Path) -> None:
    c = case("perceptron")
    x = np.random.default_rng(0).random((200, 784), dtype=np.float32)
    header, source = int8.export_int8_c(c.model, tmp_path, x, "digits")
    assert (header.name, source.name) == ("digits.h", "digits.c")
    assert "calibrated on 200 rows" in header.read_text()


# ---- the command line: mnistnet export --int8 ----------------------------------------------

@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory) -> Path:
    """300 training and 20 test images of noise in MNIST's four-file layout."""
    return write_dataset(tmp_path_factory.mktemp("tiny-mnist"), 300, 20)


@pytest.fixture
def lenet5_file(tmp_path: Path) -> Path:
    path = tmp_path / "lenet5.npz"
    case("lenet5").model.save(path)
    return path


def test_cli_int8_help(capsys) -> None:
    assert export_main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--int8", "--calibration N", "--data DIR"):
        assert option in out


def test_cli_int8_writes_what_quantize_writes(lenet5_file: Path, tiny_mnist: Path, ort,
                                              tmp_path: Path, capsys) -> None:
    """--int8 --calibration 150 --data DIR: the C and ONNX files of mn.quantize on 150
    training images drawn by calibration_sample, byte for byte, and a line of sizes."""
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(lenet5_file), "--int8", "--calibration", "150", "--data", str(tiny_mnist),
            "--c", str(out), "--name", "digits", "--onnx", str(out / "digits.onnx")]
    assert export_main(argv) == 0
    (x_train, _), _ = mn.load_mnist(tiny_mnist)
    q = mn.quantize(case("lenet5").model, int8.calibration_sample(x_train, 150))
    sizes = export_int8.c_sizes(q)
    model = case("lenet5").model
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {out / 'digits.onnx'}: {export_cli.onnx_signature(model)}",
        f"wrote {out / 'digits.h'} and {out / 'digits.c'}: "
        f"{export_cli.c_signature(model, 'digits')}",
        f"int8: calibrated on 150 MNIST training images; constants {q.weight_bytes:,} bytes "
        f"(float32 weights: {q.float_weight_bytes:,}), layer buffers "
        f"{sizes['scratch_bytes']:,} bytes"]
    (tmp_path / "want").mkdir()
    for path in (*q.export_c(tmp_path / "want", "digits"),
                 q.export_onnx(tmp_path / "want" / "digits.onnx")):
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_cli_int8_calibrates_on_mnist_by_default(lenet5_file: Path, monkeypatch, tmp_path: Path,
                                                 capsys) -> None:
    """Without --data: $MNISTNET_DATA (here the noise set, as the cache would be read the
    same way), 1,000 rows by default."""
    monkeypatch.setenv("MNISTNET_DATA", str(write_dataset(tmp_path / "data", 1200, 10)))
    assert export_main([str(lenet5_file), "--int8", "--c", str(tmp_path)]) == 0
    assert "calibrated on 1000 MNIST training images" in capsys.readouterr().out
    assert "calibrated on 1000 rows" in (tmp_path / "model.h").read_text()


@pytest.mark.parametrize(("argv", "message"), [
    pytest.param(["--calibration", "500"], "--calibration applies to --int8 only",
                 id="calibration-without-int8"),
    pytest.param(["--data", "{data}"], "--data applies to --int8 only", id="data-without-int8"),
    pytest.param(["--int8", "--calibration", "99"],
                 "--calibration 99: calibrating int8 ranges needs at least 100 images "
                 "(default 1000)", id="too-few-rows"),
    pytest.param(["--int8", "--calibration", "0"], "argument --calibration: must be an "
                 "integer >= 1, got '0'", id="zero-rows"),
    pytest.param(["--int8", "--calibration", "301"],
                 "--calibration 301: the training set has 300 images", id="more-rows-than-images"),
    pytest.param(["--int8", "--data", "{tmp}/absent"], "{tmp}/absent: no such folder",
                 id="missing-data-folder"),
])
def test_cli_int8_errors(argv: list[str], message: str, lenet5_file: Path, tiny_mnist: Path,
                         capsys) -> None:
    tmp = lenet5_file.parent
    argv = [a.format(tmp=tmp, data=tiny_mnist) for a in argv]
    if "--data" not in argv:
        argv += ["--data", str(tiny_mnist)]
    err = check_export_error([str(lenet5_file), "--c", str(tmp), *argv], capsys)
    assert message.format(tmp=tmp) in err
    assert list(tmp.iterdir()) == [lenet5_file]


@pytest.mark.parametrize(("layers", "input_shape", "message"), [
    pytest.param([mn.Dense(10)], (100,),
                 "takes inputs of shape (100,), and --int8 calibrates on MNIST images (784 "
                 "pixels): quantise it in Python, mnistnet.quantize(model, x_calibration)",
                 id="not-784-inputs"),
    pytest.param([mn.Conv2D(4, 3), mn.Flatten(), mn.Dense(10)], (32, 32, 1),
                 "takes inputs of shape (32, 32, 1), and --int8 calibrates on MNIST images",
                 id="32x32-images"),
    pytest.param([mn.Dense(8, activation="softmax"), mn.Dense(10)], (784,),
                 "cannot quantise layer 1 (Dense) to int8: it follows layer 0's softmax",
                 id="unquantisable"),
])
def test_cli_int8_refuses_a_model_it_cannot_quantise(layers, input_shape, message: str,
                                                     tiny_mnist: Path, tmp_path: Path,
                                                     capsys) -> None:
    model_path = tmp_path / "model.npz"
    mn.Model(layers, input_shape=input_shape).save(model_path)
    err = check_export_error([str(model_path), "--int8", "--c", str(tmp_path), "--data",
                              str(tiny_mnist)], capsys)
    assert message in err
    assert list(tmp_path.iterdir()) == [model_path]
