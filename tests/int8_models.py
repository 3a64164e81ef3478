"""The models and data the int8 tests share (test_int8, test_export_int8, test_cortex_m), and
the driver that runs a generated int8 C file on the host or under QEMU.

Calibration and test inputs are MNIST (the first 1,000 training images, the first 1,000 test
images) when $MNISTNET_DATA is set and the model takes 784 values, else seeded uniform noise.
Untrained models get random biases and BatchNormalization statistics (test_export's
with_random_biases): zero biases would hide a bias quantised wrongly. Trained models (one
epoch of a preset's recipe) are built once per session.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
from test_export import TIMEOUT, with_random_biases

import mnistnet as mn
from mnistnet.export import LayerStep, layer_steps
from mnistnet.layers import Shape

N_IMAGES = 1000
CORTEX_M = Path(__file__).parent / "cortex_m"
DRIVER = CORTEX_M / "driver.c"


# ---- architectures -------------------------------------------------------------------------

def odd_convnet() -> mn.Model:
    """A strided "same" convolution before a pool whose window does not divide its input (the
    fused conv + pool, with padding), an unfused "same" convolution with BatchNormalization
    and a ReLU folded in, dropout, a 33-unit Dense."""
    return mn.Model([mn.Conv2D(7, 3, strides=2, padding="same", activation="relu"),
                     mn.MaxPool2D(3),  # 14x14 -> 4x4, two rows and columns dropped
                     mn.Conv2D(5, 2, padding="same"), mn.BatchNormalization(),
                     mn.Activation("relu"), mn.Flatten(), mn.Dropout(0.3),
                     mn.Dense(33, activation="relu"), mn.Dense(10, activation="softmax")],
                    input_shape=(28, 28, 1), loss="categorical_crossentropy", seed=5)


def odd_pools() -> mn.Model:
    """Three input channels, height != width: a max pool straight on the input ("same",
    rectangular strides), a linear "same" convolution fused with a "same" pool (negative
    values, padding that must not win), a strided unfused convolution, a ReLU on its own
    (after Flatten nothing fuses), a linear output (so the float entry point's output is
    exactly the dequantised int8)."""
    return mn.Model([mn.RandomTranslation(0.1, 0.1),
                     mn.MaxPool2D(2, strides=(1, 2), padding="same"),
                     mn.Conv2D(4, (5, 3), padding="same"),
                     mn.MaxPool2D(3, strides=(1, 2), padding="same"),
                     mn.Conv2D(3, (3, 2), strides=(2, 1)), mn.Flatten(), mn.Activation("relu"),
                     mn.Dense(6)],
                    input_shape=(12, 10, 3), seed=6)




# ---- average pooling ---------------------------------------------------------------------

def average_pools(seed: int = 3) -> mn.Model:
    """A "same" ReLU conv, a "same" 2x2 average pool on 9x9 (the last window half padding),
    a linear conv, a 3x3 average pool with stride 1, a global average pool, a softmax
    Dense; uniform weights in [-0.5, 0.5]."""
    model = mn.Model([mn.Conv2D(4, 3, padding="same", activation="relu"),
                      mn.AveragePooling2D(2, padding="same"), mn.Conv2D(6, 2),
                      mn.AveragePooling2D(3, strides=1), mn.GlobalAveragePooling2D(),
                      mn.Dense(5, activation="softmax")], input_shape=(9, 9, 2), seed=seed)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    return model


# ---- hidden tanh and sigmoid (look-up tables) -----------------------------------------------

def odd_lookups() -> mn.Model:
    """Hidden sigmoid and tanh every way they lower and fuse: a linear "same" convolution
    with BatchNormalization folded in and an Activation("sigmoid"), fused with the "same" max
    pool after it through its table; a tanh convolution whose overlapping average pool does
    not fuse; a sigmoid convolution fused with a global average pool; a tanh on its own; a
    sigmoid Dense; a ReLU after it (a clamp at -128: the identity); a 33-unit tanh Dense; a
    tanh exit (in float)."""
    return mn.Model([mn.Conv2D(4, 3, padding="same"), mn.BatchNormalization(),
                     mn.Activation("sigmoid"), mn.MaxPool2D(2, padding="same"),
                     mn.Conv2D(5, 2, activation="tanh"), mn.AveragePooling2D(2, strides=1),
                     mn.Conv2D(6, 2, activation="sigmoid"), mn.GlobalAveragePooling2D(),
                     mn.Activation("tanh"), mn.Dense(16, activation="sigmoid"),
                     mn.Activation("relu"), mn.Dense(33, activation="tanh"),
                     mn.Dense(6, activation="tanh")],
                    input_shape=(11, 9, 2), seed=7)


INT8_PRESETS = ("perceptron", "hidden-relu", "cross-entropy", "convnet", "convnet-plus",
                "lenet5")
MODELS: dict[str, Callable[[], mn.Model]] = {
    **{name: functools.partial(mn.preset, name, seed=0) for name in INT8_PRESETS},
    "odd-convnet": odd_convnet, "odd-pools": odd_pools, "average-pools": average_pools,
    "odd-lookups": odd_lookups,
}


def pooling_steps(seed: int = 3) -> tuple[list[LayerStep], Shape]:
    """average_pools() as the exporters see it (export.LayerStep), and its input shape."""
    model = average_pools(seed)
    return layer_steps(model), model.input_shape


# ---- data ----------------------------------------------------------------------------------

@functools.cache
def mnist() -> tuple | None:
    folder = os.environ.get("MNISTNET_DATA")
    return mn.load_mnist(folder) if folder else None


def images(input_dim: int, train: bool, rows: int = N_IMAGES) -> np.ndarray:
    """(rows, input_dim) float32: MNIST images if they fit, else noise (different for
    calibration and test)."""
    data = mnist() if input_dim == 784 else None
    if data is not None:
        return np.ascontiguousarray(data[0 if train else 1][0][:rows])
    return np.random.default_rng(11 if train else 12).random((rows, input_dim),
                                                             dtype=np.float32)


class Case:
    """A model, its int8 twin (calibrated on 1,000 images), test inputs and their int8
    version."""

    def __init__(self, name: str, model: mn.Model) -> None:
        self.name = name
        self.model = model
        self.q = mn.quantize(model, images(model.input_dim, train=True))
        self.x = images(model.input_dim, train=False)
        self.x_int8 = self.q.quantize_input(self.x)
        self.c_name = re.sub(r"\W", "_", name)


def with_a_negative_channel(model: mn.Model) -> mn.Model:
    """odd-pools' linear convolution (layer 2) with filter 0's bias at -3: whole pool windows
    of negative sums, where a max that started at 0 would show."""
    weights = model.get_weights()
    weights[1][0] = -3.0
    model.set_weights(weights)
    return model


def with_steep_kernels(model: mn.Model) -> mn.Model:
    """Every kernel four times its Glorot draw: the pre-activations of odd-lookups spread
    over its tables' whole range, both saturated ends included, and its outputs vary from
    one noise image to the next (they barely do after its pools otherwise)."""
    model.set_weights([4 * w if w.ndim > 1 else w for w in model.get_weights()])
    return model


# What each case's model gets after its random biases.
TWEAKS: dict[str, Callable[[mn.Model], mn.Model]] = {"odd-pools": with_a_negative_channel,
                                                     "odd-lookups": with_steep_kernels}


@functools.cache
def case(name: str) -> Case:
    """MODELS[name] with random biases (and its TWEAKS), quantised (built once)."""
    model = with_random_biases(MODELS[name]())
    return Case(name, TWEAKS.get(name, lambda m: m)(model))


@functools.cache
def trained(preset: str, epochs: int = 1) -> mn.Model:
    """A preset trained `epochs` epochs on MNIST with its recipe's batch size (once)."""
    (x_train, y_train), _ = mnist()
    model = mn.preset(preset, seed=0)
    model.fit(x_train, y_train, epochs=epochs,
              batch_size=mn.RECIPES[preset]["batch_size"], verbose=0)
    return model


@functools.cache
def trained_case(preset: str) -> Case:
    return Case(f"trained-{preset}", trained(preset))


# ---- running the C -------------------------------------------------------------------------

def write_driver(folder: Path, name: str) -> Path:
    """tests/cortex_m/driver.c for the model NAME, as folder/driver.c."""
    path = folder / "driver.c"
    path.write_text(DRIVER.read_text().replace("UPPER", name.upper()).replace("NAME", name))
    return path


def write_inputs(folder: Path, x_int8: np.ndarray, x: np.ndarray | None) -> None:
    """The driver's inputs in folder: inputs.i8 and (unless None) inputs.f32."""
    np.ascontiguousarray(x_int8, dtype=np.int8).tofile(folder / "inputs.i8")
    if x is not None:
        np.ascontiguousarray(x, dtype=np.float32).tofile(folder / "inputs.f32")


def parse_driver_output(text: str, n_outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 outputs, float outputs) from the driver's lines; asserts it finished."""
    lines = text.splitlines()
    done = [line for line in lines if line.startswith("done ")]
    assert done, f"the driver did not finish; its output ends:\n{text[-2000:]}"
    n_int8, n_float = (int(v) for v in done[-1].split()[1:])
    q = np.array([[int(v) for v in line.split()[1:]] for line in lines
                  if line.startswith("int8")], dtype=np.int64).reshape(-1, n_outputs)
    bits = np.array([[int(v, 16) for v in line.split()[1:]] for line in lines
                     if line.startswith("float")], dtype=np.uint32).reshape(-1, n_outputs)
    assert (len(q), len(bits)) == (n_int8, n_float), done[-1]
    return q, bits.view(np.float32)


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
                            env=env)
    assert result.returncode == 0, (f"{argv[0]} exited {result.returncode}:\n"
                                    f"{result.stderr[-2000:]}\n{result.stdout[-2000:]}")
    return result.stdout
