"""mnistnet.export: the ONNX graph (run by onnxruntime) and the generated C (compiled as C99
and as C++, and once under AddressSanitizer and UBSan) give model.predict's outputs, for the
presets and for architectures with odd geometry; and the errors a user can cause.

Inputs are 1,000 MNIST test images when $MNISTNET_DATA is set (and the model takes 784
floats), else seeded uniform [0, 1) noise. Weights: each model's seeded Glorot kernels, with
random biases (zero biases would hide a bias applied wrongly, or not at all).

Without onnx/onnxruntime, or without a C compiler, those tests skip; MNISTNET_REQUIRE=onnx or
MNISTNET_REQUIRE=compiler (comma-separated) turns the skips into failures.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import mnistnet as mn
from mnistnet import cli, export

TOLERANCE = 1e-5  # max absolute difference from model.predict
N_IMAGES = 1000
TIMEOUT = 300  # seconds for one build or run (a loaded 2-core machine compiles slowly)
C_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]
CXX_FLAGS = ["-x", "c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]
SANITIZE_FLAGS = ["-std=c99", "-O1", "-g", "-fno-omit-frame-pointer",
                  "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
STANDARD_ONNX_OPS = {"Gemm", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
                     "Transpose", "BatchNormalization", "Tanh",
                     "Relu", "Sigmoid", "Softmax"}
WRITABLE_DATA_SYMBOLS = set("bBdDgGsSC")  # nm's letters for .bss, .data, small data, common


def required(what: str) -> bool:
    """True if MNISTNET_REQUIRE (comma-separated) lists `what`: skipping it is then a failure."""
    return what in os.environ.get("MNISTNET_REQUIRE", "").replace(" ", "").split(",")


def skip_or_fail(what: str, reason: str):
    if required(what):
        pytest.fail(f"{reason} (MNISTNET_REQUIRE={os.environ['MNISTNET_REQUIRE']})")
    pytest.skip(reason)


# ---- the models and their inputs -----------------------------------------------------------

def odd_convnet() -> mn.Model:
    """Strided "same" convolution, a pool that does not divide its input, a sigmoid conv,
    dropout between Flatten and Dense."""
    return mn.Model([mn.Conv2D(7, 3, strides=2, padding="same", activation="relu"),
                     mn.MaxPool2D(3),  # 14x14 -> 4x4, two rows and columns dropped
                     mn.Conv2D(5, 2, padding="same", activation="sigmoid"),
                     mn.Flatten(), mn.Dropout(0.3), mn.Dense(33, activation="relu"),
                     mn.Dense(10, activation="softmax")],
                    input_shape=(28, 28, 1), loss="categorical_crossentropy", seed=5)


def odd_channels() -> mn.Model:
    """Height != width and three input channels (a transpose mix-up shows), rectangular
    windows padded before them (top and left), "same" pooling of a linear conv's output (so
    padding that won the max would show), a softmax over each pixel's channels, a linear
    output."""
    return mn.Model([mn.Conv2D(4, (5, 3), padding="same"),  # pads 2 rows on top, 1 column left
                     mn.MaxPool2D(3, strides=(1, 2), padding="same"),  # 1 on top, 1 on the right
                     mn.Conv2D(4, (3, 2), strides=(2, 1), activation="softmax"),
                     mn.Flatten(), mn.Dense(6)],
                    input_shape=(12, 10, 3), seed=6)


def flatten_first() -> mn.Model:
    """Images flattened straight away: no convolution, so no transpose either."""
    return mn.Model([mn.Flatten(), mn.Dense(10, activation="sigmoid")],
                    input_shape=(28, 28, 1), seed=7)


def augmented() -> mn.Model:
    """RandomTranslation (the identity at inference), BatchNormalization over a conv's
    channels and over features, Activation layers (a softmax over the features last)."""
    return mn.Model([mn.RandomTranslation(0.1, 0.1), mn.Conv2D(6, 3, padding="same"),
                     mn.BatchNormalization(), mn.Activation("relu"), mn.MaxPool2D(2),
                     mn.Flatten(), mn.Dense(12), mn.BatchNormalization(epsilon=0.01),
                     mn.Activation("sigmoid"), mn.Dense(10), mn.Activation("softmax")],
                    input_shape=(28, 28, 1), loss="categorical_crossentropy", seed=8)


MODELS: dict[str, Callable[[], mn.Model]] = {
    **{name: functools.partial(mn.preset, name, seed=0) for name in mn.PRESETS},
    "odd-convnet": odd_convnet, "odd-channels": odd_channels, "flatten-first": flatten_first,
    "augmented": augmented,
}


def with_random_biases(model: mn.Model, seed: int = 0) -> mn.Model:
    """Every 1-D weight random (biases; BatchNormalization's beta and moving mean), and
    BatchNormalization's gamma and moving variance random and scaling up (outputs that vary
    from image to image)."""
    rng = np.random.default_rng(seed)
    model.set_weights([w if w.ndim > 1 else rng.uniform(-0.5, 0.5, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    for i, layer in enumerate(model.layers):
        if isinstance(layer, mn.BatchNormalization):
            off, c = int(model.plan.table[i]["param"]), int(model.plan.table[i]["out_c"])
            model.params[off: off + c] = rng.uniform(0.5, 1.5, c)
            model.params[off + 3 * c: off + 4 * c] = rng.uniform(0.3, 1.0, c)
    return model


@functools.cache
def mnist_test_images() -> np.ndarray | None:
    folder = os.environ.get("MNISTNET_DATA")
    return mn.load_mnist(folder)[1][0][:N_IMAGES] if folder else None


def inputs_for(model: mn.Model) -> np.ndarray:
    """(N_IMAGES, input_dim) float32: MNIST test images if they fit, else noise."""
    images = mnist_test_images() if model.input_dim == 784 else None
    if images is not None:
        return np.ascontiguousarray(images.reshape(N_IMAGES, -1), dtype=np.float32)
    return np.random.default_rng(1).random((N_IMAGES, model.input_dim), dtype=np.float32)


class Case:
    """A model, its inputs and model.predict's outputs on them."""

    def __init__(self, name: str, model: mn.Model, x: np.ndarray) -> None:
        self.name = name
        self.model = model
        self.x = x
        self.want = model.predict(x)
        self.c_name = name.replace("-", "_")  # each case exports under its own C name


@functools.cache
def make_case(name: str) -> Case:
    """The model MODELS[name] with random biases, on its test inputs (built once)."""
    model = with_random_biases(MODELS[name]())
    return Case(name, model, inputs_for(model))


@pytest.fixture(params=list(MODELS))
def case(request) -> Case:
    return make_case(request.param)


def assert_matches(got: np.ndarray, want: np.ndarray) -> None:
    """got equals want within TOLERANCE, and want varies from sample to sample (outputs that
    saturated for every input would prove nothing)."""
    assert got.shape == want.shape and got.dtype == np.float32
    assert want.std(axis=0).min() > 10 * TOLERANCE, "the outputs barely vary: a weak check"
    error = np.abs(got - want).max()
    assert error <= TOLERANCE, f"max |export - predict| = {error:.3g} > {TOLERANCE}"


# ---- ONNX ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ort():
    """onnxruntime (and onnx, which the export needs); skips (or fails) without them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        skip_or_fail("onnx", f"the ONNX tests need onnx and onnxruntime "
                             f"(pip install onnx onnxruntime): {exc}")
    return onnxruntime


def onnx_session(ort, path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_predict(session, case: Case, x: np.ndarray) -> np.ndarray:
    (got,) = session.run(["output"], {"input": x.reshape(-1, *case.model.input_shape)})
    return got


def test_onnx_matches_predict(case: Case, ort, tmp_path: Path) -> None:
    path = export.export_onnx(case.model, tmp_path / "model.onnx")
    session = onnx_session(ort, path)
    assert_matches(onnx_predict(session, case, case.x), case.want)
    # The batch axis is dynamic: one row at a time works too.
    assert np.abs(onnx_predict(session, case, case.x[:1]) - case.want[:1]).max() <= TOLERANCE


def test_onnx_graph_is_standard_and_checked(case: Case, ort, tmp_path: Path) -> None:
    import onnx

    path = export.export_onnx(case.model, tmp_path / "model.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert ops <= STANDARD_ONNX_OPS, ops
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [13]
    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    assert (graph_input.name, graph_output.name) == ("input", "output")
    assert tensor_dims(graph_input) == ["batch", *case.model.input_shape]
    assert tensor_dims(graph_output) == ["batch", case.model.n_outputs]
    assert proto.producer_name == "mnistnet"
    assert proto.producer_version == mn.__version__


def tensor_dims(value_info) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_onnx_later_opset(ort, tmp_path: Path) -> None:
    case = make_case("odd-convnet")
    path = export.export_onnx(case.model, tmp_path / "model.onnx", opset=18)
    assert_matches(onnx_predict(onnx_session(ort, path), case, case.x), case.want)


@pytest.mark.parametrize("opset", [12, 10_000, 13.0, True])
def test_onnx_refuses_an_opset_out_of_range(opset, ort, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset must be an integer from 13"):
        export.export_onnx(make_case("perceptron").model, tmp_path / "model.onnx", opset)
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(ImportError, match=re.escape('pip install "mnistnet[onnx]"')):
        export.export_onnx(make_case("perceptron").model, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_write_is_atomic(ort, monkeypatch, tmp_path: Path) -> None:
    """A failure while writing leaves the old file as it was and no temporary file."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        export.export_onnx(make_case("perceptron").model, target)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert target.read_bytes() == b"old"


# ---- C: building and running ---------------------------------------------------------------

def compiler(variable: str, default: str, config_var: str | None = None) -> list[str]:
    """$variable, else sysconfig's config_var, else default, as an argv prefix; skips (or
    fails, see `required`) if it is not on PATH."""
    if sys.platform == "win32":
        skip_or_fail("compiler", "the C export tests drive a Unix-style cc, not MSVC")
    configured = sysconfig.get_config_var(config_var) if config_var else None
    command = shlex.split(os.environ.get(variable) or configured or default)
    if not command or shutil.which(command[0]) is None:
        skip_or_fail("compiler", f"no compiler: {command!r} is not on PATH")
    return command


def probe(command: list[str], flags: list[str], tmp: Path, what: str) -> list[str]:
    """command, if it builds and runs a trivial program with flags; else skip (or fail)."""
    (tmp / "probe.c").write_text("int main(void) { return 0; }\n")
    result = subprocess.run([*command, *flags, "probe.c", "-o", "probe"], cwd=tmp,
                            capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0 or subprocess.run([str(tmp / "probe")]).returncode != 0:
        output = (result.stderr or result.stdout).strip()[:300]
        skip_or_fail("compiler", f"{what}: `{shlex.join([*command, *flags])}` can't build a "
                                 f"program{': ' + output if output else ''}")
    return command


@pytest.fixture(scope="module")
def cc(tmp_path_factory) -> list[str]:
    return probe(compiler("CC", "cc", "CC"), C_FLAGS, tmp_path_factory.mktemp("cc"),
                 "no working C compiler")


@pytest.fixture(scope="module")
def cxx(tmp_path_factory) -> list[str]:
    return probe(compiler("CXX", "c++"), CXX_FLAGS, tmp_path_factory.mktemp("cxx"),
                 "no working C++ compiler")


def nm() -> str:
    path = shutil.which(os.environ.get("NM", "nm"))
    if path is None:
        skip_or_fail("compiler", "no nm to list the object file's symbols")
    return path


DRIVER = """\
/* Reads samples of float32 from argv[1], writes NAME_predict's outputs to argv[2]. */
#include <stdio.h>

#include "NAME.h"

int main(int argc, char **argv)
{
    float input[UPPER_INPUT_SIZE];
    float output[UPPER_OUTPUT_SIZE];
    FILE *in, *out;
    int status = 0;
    if (argc != 3)
        return 2;
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (in == NULL || out == NULL)
        return 3;
    while (status == 0 && fread(input, sizeof input[0], UPPER_INPUT_SIZE, in) == UPPER_INPUT_SIZE) {
        if (NAME_predict(input, output) != 0)
            status = 4;
        else if (fwrite(output, sizeof output[0], UPPER_OUTPUT_SIZE, out) != UPPER_OUTPUT_SIZE)
            status = 5;
    }
    fclose(in);
    return fclose(out) == 0 ? status : 6;
}
"""


def write_driver(folder: Path, name: str) -> Path:
    path = folder / "driver.c"
    path.write_text(DRIVER.replace("UPPER", name.upper()).replace("NAME", name))
    return path


def build(command: list[str], sources: list[Path], output: Path) -> Path:
    """Compile (`-c` in command: to an object file) or link; assert it worked."""
    argv = [*command, *map(str, sources), "-o", str(output)]
    if "-c" not in command:
        argv.append("-lm")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stderr}"
    return output


def run_predict(exe: Path, case: Case, env: dict[str, str] | None = None) -> np.ndarray:
    inputs, outputs = exe.with_suffix(".in"), exe.with_suffix(".out")
    case.x.tofile(inputs)
    result = subprocess.run([str(exe), str(inputs), str(outputs)], capture_output=True,
                            text=True, timeout=TIMEOUT, env=env)
    assert result.returncode == 0, f"{exe.name} exited {result.returncode}:\n{result.stderr}"
    return np.fromfile(outputs, dtype=np.float32).reshape(-1, case.model.n_outputs)


def exported_c(case: Case, folder: Path) -> tuple[Path, Path]:
    """The case's model as folder/<c_name>.c (returned), with the test driver beside it."""
    _, source = export.export_c(case.model, folder, case.c_name)
    return source, write_driver(folder, case.c_name)


# ---- C: the tests --------------------------------------------------------------------------

def test_c_matches_predict(case: Case, cc, tmp_path: Path) -> None:
    source, driver = exported_c(case, tmp_path)
    exe = build([*cc, *C_FLAGS], [source, driver], tmp_path / "predict")
    assert_matches(run_predict(exe, case), case.want)


def test_c_compiles_as_cxx(cc, cxx, tmp_path: Path) -> None:
    """The source compiles as C++; the header's extern "C" lets C++ call the C build."""
    case = make_case("odd-convnet")
    source, driver = exported_c(case, tmp_path)
    as_cxx = build([*cxx, *CXX_FLAGS, "-c"], [source], tmp_path / "model_cxx.o")
    as_c = build([*cc, *C_FLAGS, "-c"], [source], tmp_path / "model_c.o")
    driver_cxx = build([*cxx, *CXX_FLAGS, "-c"], [driver], tmp_path / "driver.o")
    for obj in (as_cxx, as_c):
        exe = build([*cxx], [driver_cxx, obj], tmp_path / f"predict_{obj.stem}")
        assert_matches(run_predict(exe, case), case.want)


@pytest.mark.parametrize("name", ["odd-convnet", "odd-channels"])
def test_c_runs_clean_under_sanitizers(name: str, cc, tmp_path: Path) -> None:
    case = make_case(name)
    probe(cc, SANITIZE_FLAGS, tmp_path, "no AddressSanitizer/UBSan")
    source, driver = exported_c(case, tmp_path)
    exe = build([*cc, *SANITIZE_FLAGS], [source, driver], tmp_path / "predict")
    # Leak checking needs ptrace, which containers often deny; there is no allocation anyway.
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    assert_matches(run_predict(exe, case, env), case.want)


@pytest.mark.parametrize("name", ["convnet", "odd-convnet", "hidden-relu"])
def test_c_has_no_allocation_and_no_writable_global(name: str, cc, tmp_path: Path) -> None:
    case = make_case(name)
    source, _ = exported_c(case, tmp_path)
    text = source.read_text()
    assert not re.search(r"\b(malloc|calloc|realloc|free|alloca)\b", text)
    # At file scope: only constants, the static helpers and the one public function.
    top_level = [line for line in text.splitlines() if re.match(r"(static|int|float) ", line)]
    for line in top_level:
        assert re.match(r"static const |static void \w+\(|int \w+_predict\(", line), line
    obj = build([*cc, *C_FLAGS, "-c"], [source], tmp_path / "model.o")
    symbols = [line.split() for line in subprocess.run(
        [nm(), str(obj)], capture_output=True, text=True, check=True).stdout.splitlines()]
    kinds = {fields[-1]: fields[-2] for fields in symbols if len(fields) >= 2}
    writable = {symbol: kind for symbol, kind in kinds.items() if kind in WRITABLE_DATA_SYMBOLS}
    assert writable == {}, writable
    defined_globally = sorted(s for s, kind in kinds.items() if kind.isupper() and kind != "U")
    assert defined_globally == [f"{case.c_name}_predict"]


def test_c_header_constants_and_comment(tmp_path: Path) -> None:
    case = make_case("odd-channels")
    header, source = export.export_c(case.model, tmp_path, "digits")
    text = header.read_text()
    assert "#define DIGITS_INPUT_SIZE 360\n" in text
    assert "#define DIGITS_OUTPUT_SIZE 6\n" in text
    assert "int digits_predict(const float *input, float *output);" in text
    assert 'extern "C"' in text
    comment = source.read_text().split("*/", 1)[0]
    assert f"mnistnet {mn.__version__}" in comment
    for step in export.layer_steps(case.model):
        assert step.describe() in comment


def test_c_floats_round_trip() -> None:
    scales = 10.0 ** (np.arange(1000) % 60 - 30)  # 1e-30 to 1e29
    values = (np.random.default_rng(2).standard_normal(1000) * scales).astype(np.float32)
    values = np.concatenate([values, np.float32([0.0, -0.0, 1.0, np.finfo(np.float32).tiny,
                                                 np.finfo(np.float32).max, 1e-45])])
    literals = [export.c_float(v) for v in values]
    assert all(re.fullmatch(r"-?\d(\.\d+)?e[-+]\d+f", text) for text in literals), literals[:5]
    back = np.array([float(text[:-1]) for text in literals]).astype(np.float32)
    assert back.tobytes() == values.tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cross-entropy", "convnet"])
def test_trained_model_exports_match(preset: str, mnist, ort, cc, tmp_path: Path) -> None:
    """Trained weights (one epoch on 10,000 MNIST images) are sharper than fresh ones: both
    exports still give predict's outputs on the whole test set."""
    (x_train, y_train), (x_test, _) = mnist
    model = mn.preset(preset, seed=0)
    model.fit(x_train[:10_000], y_train[:10_000], epochs=1, verbose=0)
    case = Case(preset, model, np.ascontiguousarray(x_test, dtype=np.float32))
    onnx_path = export.export_onnx(model, tmp_path / "model.onnx")
    assert_matches(onnx_predict(onnx_session(ort, onnx_path), case, case.x), case.want)
    source, driver = exported_c(case, tmp_path)
    exe = build([*cc, *C_FLAGS], [source, driver], tmp_path / "predict")
    assert_matches(run_predict(exe, case), case.want)


# ---- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["3d", "my-model", "a b", "", "int", "class", "not",
                                  "_Private", "__model", "café"])
def test_c_refuses_a_bad_name(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="C name"):
        export.export_c(make_case("perceptron").model, tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_c_creates_its_folder(tmp_path: Path) -> None:
    """As `plot --out` does (and Keras' ModelCheckpoint): missing folders are made."""
    header, source = export.export_c(make_case("perceptron").model,
                                     tmp_path / "new" / "firmware", "digits")
    assert (header, source) == (tmp_path / "new" / "firmware" / "digits.h",
                                tmp_path / "new" / "firmware" / "digits.c")
    assert header.is_file() and source.is_file()


def test_onnx_creates_its_folder(ort, tmp_path: Path) -> None:
    target = tmp_path / "new" / "onnx" / "m.onnx"
    assert export.export_onnx(make_case("perceptron").model, target) == target
    assert target.is_file()


def test_export_refuses_a_file_where_a_folder_goes(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("hello\n")
    with pytest.raises(NotADirectoryError, match="notes is a file, not a folder"):
        export.export_c(make_case("perceptron").model, tmp_path / "notes" / "firmware")
    with pytest.raises(NotADirectoryError, match="notes is a file, not a folder"):
        export.export_onnx(make_case("perceptron").model, tmp_path / "notes" / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_c_write_is_atomic(monkeypatch, tmp_path: Path) -> None:
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        export.export_c(make_case("perceptron").model, tmp_path)
    assert list(tmp_path.iterdir()) == []


class Mystery(mn.Dense):
    """A layer class outside the table of kinds (a Dense to the engine, were it let in)."""


def test_a_layer_outside_the_table_of_kinds_is_refused() -> None:
    """Every kind in the table has both exporters (tests/test_kinds.py); a layer class the
    table does not know never becomes a model, so it can never be exported as something
    else."""
    with pytest.raises(ValueError, match=r"unknown layer kind 'Mystery'; valid: Dense, "):
        mn.Model([mn.Dense(8, activation="relu"), Mystery(10)], input_dim=784)


@pytest.mark.parametrize("target", ["C", "ONNX"])
def test_an_unknown_activation_is_an_error(target: str, request, tmp_path: Path) -> None:
    model = mn.Model([mn.Dense(10)], input_dim=784)
    model.layers[0].activation = "swish"  # what a later engine might add: never exported as linear
    if target == "ONNX":
        request.getfixturevalue("ort")
    with pytest.raises(ValueError, match=rf"layer 0 \(Dense\) to {target}: .*'swish'"):
        if target == "C":
            export.export_c(model, tmp_path)
        else:
            export.export_onnx(model, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


# ---- the command line ----------------------------------------------------------------------

@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.npz"
    make_case("odd-convnet").model.save(path)
    return path


def export_main(argv: list[str]) -> int:
    """cli.main(["export", *argv]); fails clearly while cli.py lacks the command."""
    if "export" not in cli.COMMANDS:
        pytest.fail("mnistnet.cli has no 'export' command: wire mnistnet.export into cli.py")
    return cli.main(["export", *argv])


def check_export_error(argv: list[str], capsys) -> str:
    """`mnistnet export argv` exits 2 with one line `mnistnet: error: ...` and no output."""
    code = export_main(argv)
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), (code, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("mnistnet: error: "), err
    return err


def test_cli_help(capsys) -> None:
    assert export_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mnistnet export")
    for option in ("--onnx", "--c", "--name", "--opset"):
        assert option in out


C_INPUT_NOTE = ("digits_predict(input, output) reads 784 floats (one (28, 28, 1) image, "
                "row-major, channels last) and writes 10")


def test_cli_writes_c(model_file: Path, cc, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert export_main([str(model_file), "--c", str(out_dir), "--name", "digits"]) == 0
    assert capsys.readouterr().out == (f"wrote {out_dir / 'digits.h'} and "
                                       f"{out_dir / 'digits.c'}: {C_INPUT_NOTE}\n")
    case = make_case("odd-convnet")
    exe = build([*cc, *C_FLAGS], [out_dir / "digits.c", write_driver(out_dir, "digits")],
                tmp_path / "predict")
    assert_matches(run_predict(exe, case), case.want)


def test_cli_writes_onnx_and_c(model_file: Path, ort, tmp_path: Path, capsys) -> None:
    onnx_path = tmp_path / "model.onnx"
    assert export_main([str(model_file), "--onnx", str(onnx_path), "--c", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {onnx_path}: input 'input' of shape (n, 28, 28, 1), float32 (for rows of 784: "
        "x.reshape(-1, 28, 28, 1)); output 'output' of shape (n, 10)",
        f"wrote {tmp_path / 'model.h'} and {tmp_path / 'model.c'}: "
        + C_INPUT_NOTE.replace("digits_", "model_")]
    case = make_case("odd-convnet")
    assert_matches(onnx_predict(onnx_session(ort, onnx_path), case, case.x), case.want)


@pytest.mark.parametrize(("argv", "message"), [
    pytest.param([], "give --onnx FILE.onnx and/or --c DIR", id="no-output"),
    pytest.param(["--c", "{tmp}/model.npz/firmware"],
                 "--c {tmp}/model.npz/firmware: {tmp}/model.npz is a file, not a folder",
                 id="file-in-the-c-folder's-way"),
    pytest.param(["--c", "{tmp}", "--name", "3d"], "C name '3d' is not a C identifier",
                 id="bad-name"),
    pytest.param(["--c", "{tmp}", "--name", "int"], "C name 'int' is a C or C++ keyword",
                 id="keyword-name"),
    pytest.param(["--onnx", "{tmp}/model.npz/m.onnx"],
                 "--onnx {tmp}/model.npz/m.onnx: {tmp}/model.npz is a file, not a folder",
                 id="file-in-the-onnx-folder's-way"),
    pytest.param(["--onnx", "{tmp}/m.onnx", "--name", "digits"], "--name applies to --c only",
                 id="name-without-c"),
    pytest.param(["--c", "{tmp}", "--opset", "17"], "--opset applies to --onnx only",
                 id="opset-without-onnx"),
])
def test_cli_errors(argv: list[str], message: str, model_file: Path, capsys) -> None:
    tmp = model_file.parent
    err = check_export_error([str(model_file), *(a.format(tmp=tmp) for a in argv)], capsys)
    assert message.format(tmp=tmp) in err
    assert list(tmp.iterdir()) == [model_file]


def test_cli_creates_the_readmes_folder(model_file: Path, monkeypatch, capsys) -> None:
    """The README's `mnistnet export model.npz --c firmware --name digits`, as written, in a
    folder without firmware/."""
    monkeypatch.chdir(model_file.parent)
    assert export_main(["model.npz", "--c", "firmware", "--name", "digits"]) == 0
    assert capsys.readouterr().out == (f"wrote {Path('firmware', 'digits.h')} and "
                                       f"{Path('firmware', 'digits.c')}: {C_INPUT_NOTE}\n")
    assert sorted(p.name for p in (model_file.parent / "firmware").iterdir()) == [
        "digits.c", "digits.h"]


def test_cli_says_a_dense_models_onnx_input(tmp_path: Path, ort, capsys) -> None:
    make_case("perceptron").model.save(tmp_path / "dense.npz")
    assert export_main([str(tmp_path / "dense.npz"), "--onnx", str(tmp_path / "d.onnx")]) == 0
    assert capsys.readouterr().out == (
        f"wrote {tmp_path / 'd.onnx'}: input 'input' of shape (n, 784), float32; output "
        "'output' of shape (n, 10)\n")


def test_cli_refuses_a_file_that_is_no_model(tmp_path: Path, capsys) -> None:
    not_a_model = tmp_path / "notes.npz"
    not_a_model.write_text("hello\n")
    err = check_export_error([str(not_a_model), "--c", str(tmp_path)], capsys)
    assert "not a mnistnet model file" in err
    assert list(tmp_path.iterdir()) == [not_a_model]


def test_cli_missing_model_file(tmp_path: Path, capsys) -> None:
    err = check_export_error([str(tmp_path / "absent.npz"), "--c", str(tmp_path)], capsys)
    assert "absent.npz: No such file or directory" in err


def test_cli_bad_opset(model_file: Path, ort, capsys) -> None:
    err = check_export_error([str(model_file), "--onnx", str(model_file.parent / "m.onnx"),
                              "--opset", "9"], capsys)
    assert "opset must be an integer from 13" in err


def test_cli_without_onnx_writes_nothing(model_file: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    tmp = model_file.parent
    err = check_export_error([str(model_file), "--onnx", str(tmp / "m.onnx"), "--c", str(tmp)],
                             capsys)
    assert 'pip install "mnistnet[onnx]"' in err
    assert list(tmp.iterdir()) == [model_file]
