"""Run a trained model without mnistnet: as an ONNX graph, or as one C99 source file.

    from mnistnet.export import export_c, export_onnx
    export_onnx(model, "model.onnx")           # needs the optional extra mnistnet[onnx]
    export_c(model, "firmware/", name="digits")  # writes digits.h and digits.c

    mnistnet export model.npz --onnx model.onnx --c firmware/ --name digits

ONNX: standard operators only (Gemm, Conv, MaxPool, Flatten, Transpose, BatchNormalization,
Relu, Sigmoid, Softmax), opset 13 or later. The graph input "input" has the model's input
shape, channels last, with a dynamic batch axis ("batch"); the output "output" is (batch,
n_outputs).
Convolutions and pooling run channels first, as ONNX defines them: the image is transposed
once before the first of them, and back to channels last before Flatten, so the flattened
order (and the next Dense kernel) is Keras'.

C: `int <name>_predict(const float *input, float *output)` computes one sample (flattened in
the model's channels-last order) into <NAME>_OUTPUT_SIZE floats and returns 0. The weights are
`static const float` arrays, the layer outputs live in local arrays on the stack sized at
generation time: no malloc, no writable global, thread-safe; it needs only libm and compiles
as C99 and as C++.

Each kind's emitters are in its entry of the table of kinds (mnistnet.kinds): this module
gives them the graph being built (OnnxGraph) or a writer for the layer's C (CLayerWriter),
and assembles the file; a kind that is the identity at inference (Dropout,
RandomTranslation) emits nothing.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistnet._files import write_atomically
from mnistnet._version import __version__
from mnistnet.codes import window_geometry
from mnistnet.kinds import IDENTITY, Kind, kind_of
from mnistnet.layers import Layer, Shape

if TYPE_CHECKING:
    from mnistnet.model import Model

__all__ = ["export_c", "export_onnx"]

MIN_OPSET = 13  # the first opset whose Softmax normalises over one axis only
DEFAULT_OPSET = MIN_OPSET
DEFAULT_C_NAME = "model"
ONNX_MISSING = 'ONNX export needs the onnx package: pip install "mnistnet[onnx]"'
FLOATS_PER_LINE = 6  # in the generated C arrays

# C and C++ keywords (C23 and C++23 included) and C++'s alternative operator names: none can
# be an identifier in both languages.
C_KEYWORDS = frozenset("""
    alignas alignof and and_eq asm atomic_cancel atomic_commit atomic_noexcept auto bitand
    bitor bool break case catch char char8_t char16_t char32_t class co_await co_return
    co_yield compl concept const const_cast consteval constexpr constinit continue decltype
    default delete do double dynamic_cast else enum explicit export extern false float for
    friend goto if inline int long mutable namespace new noexcept not not_eq nullptr operator
    or or_eq private protected public reflexpr register reinterpret_cast requires restrict
    return short signed sizeof static static_assert static_cast struct switch synchronized
    template this thread_local throw true try typedef typeid typename typeof typeof_unqual
    union unsigned using virtual void volatile wchar_t while xor xor_eq
    _Alignas _Alignof _Atomic _BitInt _Bool _Complex _Decimal128 _Decimal32 _Decimal64
    _Generic _Imaginary _Noreturn _Static_assert _Thread_local
""".split())
C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---- what both exporters read --------------------------------------------------------------

@dataclass(frozen=True)
class LayerStep:
    """One layer as an exporter sees it: its position, shapes (without the batch axis) and
    weights in Keras' order and shapes (kernel then bias; none for a layer without)."""

    index: int
    layer: Layer
    input_shape: Shape
    output_shape: Shape
    weights: tuple[np.ndarray, ...]

    @property
    def kind(self) -> str:
        """The layer's kind's name (its class name)."""
        return kind_of(self.layer).name

    def describe(self) -> str:
        """E.g. "layer 0: Dense(10, activation='sigmoid'): (784,) -> (10,)"."""
        return (f"layer {self.index}: {self.layer!r}: {tuple(self.input_shape)} -> "
                f"{tuple(self.output_shape)}")


def layer_steps(model: Model) -> list[LayerStep]:
    """The model's layers with their shapes and (copies of) their weights."""
    weights = iter(model.get_weights())
    steps = []
    for i, layer in enumerate(model.layers):
        ins, outs = model.plan.shapes[i], model.plan.shapes[i + 1]
        arrays = tuple(next(weights) for _ in layer.weight_shapes(ins))
        steps.append(LayerStep(i, layer, tuple(ins), tuple(outs), arrays))
    return steps


def describe_model(model: Model) -> list[str]:
    """The lines both exports carry: who made them, the input, then one line per layer."""
    layout = ", channels last" if len(model.input_shape) == 3 else ""
    return ([f"made by mnistnet {__version__} (mnistnet.export)",
             f"input {tuple(model.input_shape)}{layout}; {model.n_outputs} outputs"]
            + [step.describe() for step in layer_steps(model)])


def _emitter(step: LayerStep, target: str) -> Callable | None:
    """The step's kind's emitter for `target` ("ONNX" or "C"); None for a kind that is the
    identity at inference."""
    kind: Kind = kind_of(step.layer)
    emit = kind.onnx if target == "ONNX" else kind.c
    return None if emit is IDENTITY else emit


def _checked_activation(step: LayerStep, supported: Sequence[str], target: str) -> str:
    """The step's activation, if the target has code for it; else an error naming it."""
    activation = step.layer.activation
    if activation not in supported:
        raise ValueError(f"cannot export layer {step.index} ({step.kind}) to {target}: no "
                         f"{target} code for activation {activation!r} (supported: "
                         f"{', '.join(supported)})")
    return activation


def window_pads(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
    """(before, after) padding of a window sliding along one axis, as Keras pads: "same"
    splits the total with the extra one after; "valid" pads nothing (a remainder the last
    window does not reach is dropped)."""
    out, before = window_geometry(size, window, stride, padding)
    total = max((out - 1) * stride + window - size, 0)
    return before, total - before


# ---- files ---------------------------------------------------------------------------------

def check_output_folder(path: str | os.PathLike, label: str) -> Path:
    """`path` as a Path if it is a folder or can be made one, missing parents included (as
    `mnistnet plot --out`); else NotADirectoryError "<label>: <file> is a file, not a
    folder". Creates nothing: see make_output_folder."""
    folder = Path(path)
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise NotADirectoryError(f"{label}: {candidate} is a file, not a folder")
            break
    return folder


def make_output_folder(path: str | os.PathLike, label: str) -> Path:
    """check_output_folder, then the folder made (with its missing parents)."""
    folder = check_output_folder(path, label)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---- ONNX ----------------------------------------------------------------------------------

def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError(ONNX_MISSING) from None
    return onnx


class OnnxGraph:
    """The graph as it is built: nodes, initializers, and the tensor the next node reads,
    with its layout: "flat" (batch, features), "NHWC" (Keras') or "NCHW" (ONNX's images).
    A kind's ONNX emitter (mnistnet.kinds) adds its nodes through apply, constant,
    to_layout and window_attributes."""

    def __init__(self, onnx: Any, input_rank: int) -> None:
        self.onnx = onnx
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.tensor = "input"
        self.layout = "NHWC" if input_rank == 3 else "flat"

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(
            np.ascontiguousarray(array, dtype=np.float32), name=name))
        return name

    def apply(self, op: str, name: str, *constants: str, layout: str | None = None,
              **attributes: Any) -> None:
        """Add `op` on the current tensor (and the named constants); its output, `name`,
        becomes the current tensor, in `layout` (default: unchanged)."""
        self.nodes.append(self.onnx.helper.make_node(
            op, [self.tensor, *constants], [name], name=name, **attributes))
        self.tensor = name
        self.layout = layout or self.layout

    def to_layout(self, layout: str, name: str) -> None:
        """Transpose an image to NCHW or NHWC unless it already is."""
        if self.layout == layout:
            return
        perm = [0, 3, 1, 2] if layout == "NCHW" else [0, 2, 3, 1]
        self.apply("Transpose", name, perm=perm, layout=layout)

    @staticmethod
    def window_attributes(step: LayerStep, window: tuple[int, int]) -> dict[str, list[int]]:
        """kernel_shape, strides and pads ([top, left, bottom, right]) of a window operator
        (Conv, MaxPool, AveragePool) whose window is `window`, as the layer pads."""
        strides, padding = step.layer.strides, step.layer.padding
        (top, bottom), (left, right) = (window_pads(size, k, s, padding) for size, k, s in
                                        zip(step.input_shape[:2], window, strides, strict=True))
        return {"kernel_shape": list(window), "strides": list(strides),
                "pads": [top, left, bottom, right]}


ONNX_ACTIVATIONS = {"linear": None, "relu": "Relu", "sigmoid": "Sigmoid", "softmax": "Softmax",
                    "tanh": "Tanh"}


def _onnx_activation(g: OnnxGraph, step: LayerStep, name: str) -> None:
    op = ONNX_ACTIVATIONS[_checked_activation(step, list(ONNX_ACTIVATIONS), "ONNX")]
    if op == "Softmax":  # over the features, or an image's channels
        g.apply(op, name, axis=1 if g.layout == "NCHW" else -1)
    elif op is not None:
        g.apply(op, name)


def _check_opset(onnx: Any, opset: int) -> int:
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not (
            MIN_OPSET <= opset <= latest):
        raise ValueError(f"opset must be an integer from {MIN_OPSET} (Softmax over one "
                         f"axis) to {latest} (the newest this onnx package knows), got "
                         f"{opset!r}")
    return int(opset)


def onnx_model(model: Model, opset: int = DEFAULT_OPSET) -> Any:
    """The model as an onnx.ModelProto (checked with onnx.checker); see export_onnx."""
    onnx = _import_onnx()
    opset = _check_opset(onnx, opset)
    helper = onnx.helper
    g = OnnxGraph(onnx, len(model.input_shape))
    for step in layer_steps(model):
        emit = _emitter(step, "ONNX")
        if emit is not None:
            name = f"layer{step.index}"
            emit(g, step, name)
            _onnx_activation(g, step, f"{name}_{step.layer.activation}")
    g.nodes[-1].output[0] = "output"  # the last node made the current tensor
    float32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, "mnistnet",
        [helper.make_tensor_value_info("input", float32, ["batch", *model.input_shape])],
        [helper.make_tensor_value_info("output", float32, ["batch", model.n_outputs])],
        initializer=g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="mnistnet",
                              producer_version=__version__,
                              doc_string="\n".join(describe_model(model)))
    # The oldest IR version that has this opset: runtimes older than this onnx package load it.
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model: Model, path: str | os.PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """Write `model` as an ONNX file at `path` (atomically: a temporary file in the same
    folder, made if missing, then a rename) and return the path.

    The graph takes "input", (batch, *model.input_shape) float32 channels last (e.g. (batch,
    784) or (batch, 28, 28, 1)), and gives "output", (batch, n_outputs): what model.predict
    gives, within float32 rounding. Standard operators only, opset `opset` (13 or later).
    Needs the onnx package (pip install "mnistnet[onnx]"): ImportError without it."""
    target = Path(path)
    check_output_folder(target.parent, f"output file {target}")
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder, not a file name")
    data = onnx_model(model, opset).SerializeToString()
    make_output_folder(target.parent, f"output file {target}")
    write_atomically(target, data)
    return target


# ---- C -------------------------------------------------------------------------------------

# The activations, applied to a layer's sums (a row of features, or one pixel's channels):
# small static functions the compiler inlines, trip count included.
C_ACTIVATIONS: dict[str, str] = {
    "relu": """\
static void relu_inplace(float *x, int n)
{
    for (int i = 0; i < n; ++i)
        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
""",
    "sigmoid": """\
/* 1 / (1 + exp(-x)), from exp(-|x|) so that expf never overflows. */
static void sigmoid_inplace(float *x, int n)
{
    for (int i = 0; i < n; ++i) {
        const float e = expf(-fabsf(x[i]));
        x[i] = x[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    }
}
""",
    "tanh": """\
static void tanh_inplace(float *x, int n)
{
    for (int i = 0; i < n; ++i)
        x[i] = tanhf(x[i]);
}
""",
    "softmax": """\
/* exp(x - max) / sum(exp(x - max)): shifted by the maximum so that expf never overflows. */
static void softmax_inplace(float *x, int n)
{
    float largest = x[0];
    float sum = 0.0f;
    for (int i = 1; i < n; ++i)
        largest = x[i] > largest ? x[i] : largest;
    for (int i = 0; i < n; ++i) {
        x[i] = expf(x[i] - largest);
        sum += x[i];
    }
    for (int i = 0; i < n; ++i)
        x[i] /= sum;
}
""",
}


@dataclass
class CLayerCode:
    """What a C emitter makes of one layer: file-scope constants and functions, the
    activation helper they use, and the call (a format string with {src} and {dst}); or no
    call and a note saying why (a layer that only reinterprets its input)."""

    declarations: list[str] = field(default_factory=list)
    activation: str = "linear"
    call: str | None = None
    note: str = ""


IDENTITY_CODE = CLayerCode(note="the identity at inference")


def c_float(value: np.float32) -> str:
    """A C float literal that reads back as exactly this float32."""
    return np.format_float_scientific(np.float32(value), unique=True, trim="-") + "f"


def c_array(name: str, array: np.ndarray, comment: str) -> str:
    """`static const float name[n] = {...};` with the values of array (row-major)."""
    values = [c_float(v) for v in np.asarray(array, dtype=np.float32).ravel()]
    lines = [", ".join(values[i:i + FLOATS_PER_LINE])
             for i in range(0, len(values), FLOATS_PER_LINE)]
    body = ",\n".join(f"    {line}" for line in lines)
    return f"/* {comment} */\nstatic const float {name}[{len(values)}] = {{\n{body}\n}};\n"


def _c_activate(step: LayerStep, indent: str, vector: str, size: int) -> str:
    """The line applying the step's activation in place to `vector` of `size` floats (""
    for linear)."""
    activation = _checked_activation(step, ["linear", *C_ACTIVATIONS], "C")
    if activation == "linear":
        return ""
    return f"{indent}{activation}_inplace({vector}, {size});\n"


@dataclass(frozen=True)
class CLayerWriter:
    """What a kind's C emitter (mnistnet.kinds) is given: the layer (step) and the prefix of
    its C names, with helpers for the usual parts of a layer's code."""

    step: LayerStep
    name: str

    def array(self, suffix: str, array: np.ndarray, comment: str) -> str:
        """`static const float <name>_<suffix>[n] = {...};`"""
        return c_array(f"{self.name}_{suffix}", array, comment)

    def kernel_and_bias(self) -> list[str]:
        """The layer's kernel and bias as <name>_kernel and <name>_bias."""
        kernel, bias = self.step.weights
        return [self.array("kernel", kernel, f"layer {self.step.index}: kernel "
                                             f"{kernel.shape}, Keras' layout, row-major"),
                self.array("bias", bias, f"layer {self.step.index}: bias {bias.shape}")]

    def window(self, window: tuple[int, int]) -> dict[str, int]:
        """The sizes a window template takes (a Conv2D's kernel, a pool's window)."""
        step = self.step
        (in_h, in_w, in_c), (out_h, out_w) = step.input_shape, step.output_shape[:2]
        out_c = step.output_shape[-1]
        _, _, pad_top, pad_left = step.layer.geometry(step.input_shape)
        (k_h, k_w), (s_h, s_w) = window, step.layer.strides
        return {"in_h": in_h, "in_w": in_w, "in_c": in_c, "out_h": out_h, "out_w": out_w,
                "out_c": out_c, "k_h": k_h, "k_w": k_w, "s_h": s_h, "s_w": s_w,
                "pad_top": pad_top, "pad_left": pad_left}

    def pixels_and_channels(self) -> dict[str, int]:
        shape = self.step.output_shape
        return {"pixels": math.prod(shape[:-1]), "channels": shape[-1]}

    def function(self, template: Template, depth: int, constants: Sequence[str] = (),
                 **sizes: int | str) -> CLayerCode:
        """The layer as the template's function `<name>_<kind>` after the constants it
        reads, called from predict, with `sizes` (and any other literals it takes) written
        in; its activation goes where the template says ${activate}, `depth` levels deep."""
        step = self.step
        function = f"{self.name}_{step.kind.lower()}"
        activate = _c_activate(step, "    " * depth, "sum", step.output_shape[-1])
        code = template.substitute(function=function, name=self.name, activate=activate,
                                   **sizes)
        return CLayerCode([*constants, f"/* {step.describe()} */\n{code}"],
                          step.layer.activation, f"{function}({{src}}, {{dst}});")

    @staticmethod
    def identity(note: str) -> CLayerCode:
        """No code: a layer that only reinterprets its input (note says why)."""
        return CLayerCode(note=note)


def check_c_name(name: str) -> str:
    """name, if it can prefix the generated C identifiers; else a ValueError saying why."""
    if not isinstance(name, str) or not C_IDENTIFIER.fullmatch(name):
        raise ValueError(f"C name {name!r} is not a C identifier (letters, digits and _, not "
                         "starting with a digit)")
    if name in C_KEYWORDS:
        raise ValueError(f"C name {name!r} is a C or C++ keyword")
    if re.match(r"_[A-Z_]", name):
        raise ValueError(f"C name {name!r} is reserved for the implementation (it starts "
                         "with _ and an uppercase letter or a second _)")
    return name


@dataclass
class CProgram:
    """The generated source as its parts: constants and layer functions, the activation
    helpers they use, predict's body and its buffers."""

    name: str
    declarations: list[str] = field(default_factory=list)
    activations: set[str] = field(default_factory=set)
    statements: list[str] = field(default_factory=list)
    buffers: dict[str, int] = field(default_factory=dict)  # name -> floats


def c_program(model: Model, name: str) -> CProgram:
    """Every layer's C code, with its data flow: the first computing layer reads `input`,
    the last writes `output`, the others alternate between two local buffers, each as
    large as the largest output it holds."""
    work = []
    for step in layer_steps(model):
        emit = _emitter(step, "C")
        work.append((step, emit(CLayerWriter(step, f"layer{step.index}")) if emit
                     else IDENTITY_CODE))
    computing = [step.index for step, code in work if code.call]
    program = CProgram(name)
    src = "input"
    for step, code in work:
        note = f": {code.note}" if code.note else ""
        if program.statements:
            program.statements.append("")
        program.statements.append(f"/* {step.describe()}{note} */")
        if not code.call:
            continue
        program.declarations += code.declarations
        program.activations.add(code.activation)
        dst = ("output" if step.index == computing[-1]
               else f"buffer{computing.index(step.index) % 2}")
        if dst != "output":
            program.buffers[dst] = max(program.buffers.get(dst, 0), math.prod(step.output_shape))
        program.statements.append(code.call.format(src=src, dst=dst))
        src = dst
    return program


def _c_comment(lines: Sequence[str]) -> str:
    return "/*\n" + "".join(f" * {line}\n".replace(" \n", "\n") for line in lines) + " */\n"


def _c_header(model: Model, name: str) -> str:
    upper = name.upper()
    guard = f"MNISTNET_{upper}_H"
    sample = (f"an image {tuple(model.input_shape)} flattened, channels last"
              if len(model.input_shape) == 3 else "a row of features")
    about = [f"{name}.h: {name}_predict, a neural network as plain C.", "",
             *describe_model(model), "",
             f"{name}_predict(input, output) reads one sample, {upper}_INPUT_SIZE floats",
             f"({sample}), writes {upper}_OUTPUT_SIZE floats",
             "to output and returns 0. No allocation, no global state (thread-safe); needs",
             "libm only."]
    return (_c_comment(about)
            + f"#ifndef {guard}\n#define {guard}\n\n"
            + "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n"
            + f"#define {upper}_INPUT_SIZE {model.input_dim}\n"
            + f"#define {upper}_OUTPUT_SIZE {model.n_outputs}\n\n"
            + f"int {name}_predict(const float *input, float *output);\n\n"
            + "#ifdef __cplusplus\n}\n#endif\n\n"
            + f"#endif /* {guard} */\n")


def _c_source(model: Model, program: CProgram) -> str:
    name = program.name
    about = [f"{name}.c: generated, do not edit (regenerate with mnistnet.export.export_c).",
             "", *describe_model(model)]
    if program.buffers:
        kib = sum(program.buffers.values()) * 4 / 1024
        about += ["", f"{name}_predict keeps the layer outputs between input and output in "
                      f"{kib:.1f} KiB of stack."]
    activations = [code for activation, code in C_ACTIVATIONS.items()
                   if activation in program.activations]
    buffers = [f"    float {buffer}[{size}];" for buffer, size in program.buffers.items()]
    body = [f"    {statement}" if statement else "" for statement in program.statements]
    return "\n".join([
        _c_comment(about) + f'#include "{name}.h"\n\n#include <math.h>\n',
        *activations, *program.declarations,
        f"int {name}_predict(const float *input, float *output)\n{{",
        *buffers, *([""] if buffers else []), *body, "", "    return 0;\n}\n"])


def export_c(model: Model, directory: str | os.PathLike,
             name: str = DEFAULT_C_NAME) -> tuple[Path, Path]:
    """Write `model` as C99 source, `directory/<name>.h` and `directory/<name>.c` (each
    atomically), and return their paths.

    The header declares `int <name>_predict(const float *input, float *output)` and defines
    <NAME>_INPUT_SIZE and <NAME>_OUTPUT_SIZE; predict reads one sample flattened in the
    model's channels-last order, writes the outputs model.predict gives (within float32
    rounding) and returns 0. No dependency but libm; compiles as C++ too. `name` must be a
    C identifier that is no C/C++ keyword (ValueError otherwise); `directory` is made if
    missing, with its parents."""
    check_c_name(name)
    check_output_folder(directory, f"output folder {directory}")
    program = c_program(model, name)
    folder = make_output_folder(directory, f"output folder {directory}")
    header, source = folder / f"{name}.h", folder / f"{name}.c"
    write_atomically(header, _c_header(model, name).encode())
    write_atomically(source, _c_source(model, program).encode())
    return header, source
