"""Digests of each preset's weights after a short training on fixed synthetic data, per SIMD
path: the record tests/test_preset_digests.py holds the engine to, so that a change meant to
move code around (not to change the arithmetic) provably leaves every bit where it was.

    python tests/preset_digests.py > tests/data/preset_digests.json   # re-record (on purpose)

The data are synthetic (a seeded generator), so the check needs no MNIST; the training is two
epochs of 384 rows with each preset's recipe (its optimizer, schedule and batch size), so
every layer kind, the shuffle, the dropout and translation keys and the optimizer state all
take part. One digest per preset and SIMD path: the paths round alike in most places but not
all (a vector's horizontal sum groups lanes by its width)."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

ROWS = 384
EPOCHS = 2


def synthetic_mnist(rows: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    """rows images of 784 pixels in [0, 1] and labels 0..9, the same on every machine."""
    rng = np.random.default_rng(20261207)
    x = rng.random((rows, 784), dtype=np.float32)
    y = rng.integers(0, 10, size=rows).astype(np.uint8)
    return x, y


def _model(name: str):
    """(model, batch size): a preset with its recipe, or a variant of the cross-entropy net
    with another optimizer (the optimizers' settings cross to the kernels too)."""
    import mnistnet as mn

    if name in PRESETS:
        recipes = getattr(mn, "RECIPES", None)
        if recipes is None:
            from mnistnet.presets import RECIPES as recipes
        return mn.preset(name, seed=0), recipes[name]["batch_size"]
    l2 = mn.regularizers.L2(1e-4)
    optimizer = {"nesterov": mn.SGD(0.01, momentum=0.9, nesterov=True),
                 "rmsprop-centered": mn.RMSprop(0.001, momentum=0.5, centered=True),
                 "adamw-l2": mn.AdamW(0.001, weight_decay=0.01)}[name]
    layers = [mn.Dense(64, activation="relu", kernel_regularizer=l2),
              mn.Dense(10, activation="softmax")]
    return mn.Model(layers, input_dim=784, loss="categorical_crossentropy",
                    optimizer=optimizer, seed=0), 32


def preset_digest(name: str) -> str:
    """sha256 of the model's parameter and optimizer-state blocks after EPOCHS epochs of its
    recipe on synthetic_mnist() (in the SIMD path and with the threads now selected)."""
    x, y = synthetic_mnist()
    model, batch_size = _model(name)
    model.fit(x, y, epochs=EPOCHS, batch_size=batch_size, verbose=0)
    digest = hashlib.sha256(model.params.tobytes())
    digest.update(model.optimizer_state.tobytes())
    return digest.hexdigest()


def record(presets: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """{simd path: {preset: digest}} for every path this CPU runs."""
    from mnistnet import fast

    out: dict[str, dict[str, str]] = {}
    for path in fast.SIMD_PATHS:
        if not fast.simd_supported(path):
            continue
        fast.select_simd(path)
        out[path] = {name: preset_digest(name) for name in presets}
    fast.select_simd(None)
    return out


PRESETS = ("perceptron", "hidden-relu", "cross-entropy", "convnet", "convnet-plus")
VARIANTS = ("nesterov", "rmsprop-centered", "adamw-l2")

if __name__ == "__main__":
    json.dump(record(PRESETS + VARIANTS), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
