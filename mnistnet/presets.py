"""The presets: the tutorial's three networks, Keras' simple convnet and a stronger one,
LeNet-5, and two speedruns (99.2% and 99.5% on the test set in seconds), each with its
training recipe.

    model = mn.preset("convnet", seed=0)
    RECIPES["convnet"]   # {"optimizer": "adam", "learning_rate": 0.001, "batch_size": 128, ...}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mnistnet.layers import (
    Activation,
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    RandomTranslation,
    Rescaling,
    _choice,
    _positive_int,
)
from mnistnet.losses import CategoricalCrossentropy, Loss
from mnistnet.model import Model
from mnistnet.optimizers import SGD, Adam, Optimizer
from mnistnet.plan import MNIST_IMAGE
from mnistnet.schedules import CosineDecay, OneCycle

__all__ = ["INPUT_DTYPES", "PRESETS", "RECIPES", "optimizer_options", "preset", "recipe_loss",
           "recipe_optimizer"]

def _dense(*widths_and_activations: tuple[int, str]) -> Callable[[], list[Layer]]:
    return lambda: [Dense(units, activation=act) for units, act in widths_and_activations]


def convnet_layers() -> list[Layer]:
    """Keras' "Simple MNIST convnet": 34,826 weights."""
    return [Conv2D(32, 3, activation="relu"), MaxPool2D(2),
            Conv2D(64, 3, activation="relu"), MaxPool2D(2),
            Flatten(), Dropout(0.5), Dense(10, activation="softmax")]


def convnet_plus_layers() -> list[Layer]:
    """The convnet made stronger the usual ways: random shifts of up to 10% of the image,
    three 3x3 convolutions (32, 32, 64 filters) each followed by BatchNormalization and a
    relu, and dropout 0.3 before the output layer."""
    return [RandomTranslation(0.1, 0.1),
            Conv2D(32, 3), BatchNormalization(), Activation("relu"),
            Conv2D(32, 3), BatchNormalization(), Activation("relu"), MaxPool2D(2),
            Conv2D(64, 3), BatchNormalization(), Activation("relu"), MaxPool2D(2),
            Flatten(), Dropout(0.3), Dense(10, activation="softmax")]


def lenet5_layers() -> list[Layer]:
    """LeNet-5 (LeCun, Bottou, Bengio and Haffner, "Gradient-based learning applied to
    document recognition", 1998) as d2l.ai and most courses teach it: a 5x5 convolution of 6
    filters ("same" padding: the paper's 32x32 input is MNIST's 28x28 padded by 2), 2x2
    average pooling, a 5x5 convolution of 16 filters, 2x2 average pooling, Dense 120 and 84,
    and a softmax over the 10 classes; tanh activations as in the paper (d2l.ai uses
    sigmoid). 61,706 weights."""
    return [Conv2D(6, 5, padding="same", activation="tanh"), AveragePooling2D(2),
            Conv2D(16, 5, activation="tanh"), AveragePooling2D(2),
            Flatten(), Dense(120, activation="tanh"), Dense(84, activation="tanh"),
            Dense(10, activation="softmax")]


def speedrun_layers() -> list[Layer]:
    """tuomaso/train_mnist_fast's small net: a 5x5 convolution of 24 filters, 2x2 max
    pooling, a 3x3 convolution of 32, 2x2 max pooling, Dense 256 relu and a softmax (relu
    before the pooling here, after it there: the same, max and relu commute). 215,194
    weights; about 7 MFLOP per training image, half the convnet's."""
    return [Conv2D(24, 5, activation="relu"), MaxPool2D(2),
            Conv2D(32, 3, activation="relu"), MaxPool2D(2),
            Flatten(), Dense(256, activation="relu"), Dense(10, activation="softmax")]


def speedrun_plus_layers() -> list[Layer]:
    """The speedrun's net, wider (32 and 64 filters), seeing images shifted at random by up
    to 10% of their size (RandomTranslation(0.1, 0.1), in training only)."""
    return [RandomTranslation(0.1, 0.1),
            Conv2D(32, 5, activation="relu"), MaxPool2D(2),
            Conv2D(64, 3, activation="relu"), MaxPool2D(2),
            Flatten(), Dense(256, activation="relu"), Dense(10, activation="softmax")]


# Each preset: its layers, its input, its loss, and what it is in a few words (for --help).
PRESETS: dict[str, dict[str, Any]] = {
    "perceptron": {"layers": _dense((10, "sigmoid")), "input_shape": (784,), "loss": "mse",
                   "about": "784-10 sigmoid, MSE"},
    "hidden-relu": {"layers": _dense((128, "relu"), (64, "relu"), (10, "sigmoid")),
                    "input_shape": (784,), "loss": "mse",
                    "about": "784-128-64-10, relu then sigmoid, MSE"},
    "cross-entropy": {"layers": _dense((128, "relu"), (64, "relu"), (10, "softmax")),
                      "input_shape": (784,), "loss": "categorical_crossentropy",
                      "about": "the same with softmax and categorical cross-entropy"},
    "convnet": {"layers": convnet_layers, "input_shape": MNIST_IMAGE,
                "loss": "categorical_crossentropy", "about": "Keras' simple MNIST convnet"},
    "convnet-plus": {"layers": convnet_plus_layers, "input_shape": MNIST_IMAGE,
                     "loss": "categorical_crossentropy",
                     "about": "the convnet with BatchNormalization and RandomTranslation"},
    "lenet5": {"layers": lenet5_layers, "input_shape": MNIST_IMAGE,
               "loss": "categorical_crossentropy", "about": "LeCun et al.'s LeNet-5, tanh"},
    "speedrun": {"layers": speedrun_layers, "input_shape": MNIST_IMAGE,
                 "loss": "categorical_crossentropy",
                 "about": "99.2% in 2 epochs: a small convnet, one-cycle Adam, smoothing"},
    "speedrun-plus": {"layers": speedrun_plus_layers, "input_shape": MNIST_IMAGE,
                      "loss": "categorical_crossentropy",
                      "about": "99.5% in a minute: the speedrun wider, with random shifts"},
}
# Each preset's training recipe, as the tutorial (SGD 0.01, batch 32, 30 epochs) and Keras'
# "Simple MNIST convnet" example (Adam 0.001, batch 128, 15 epochs) train them; lenet5's was
# chosen on a validation split (trained on the first 50,000 training images, validated on
# the last 10,000: SGD 0.1 with momentum 0.9 on a cosine decay reached 0.990 in 10 epochs,
# against 0.9857-0.9891 for Adam 0.001, one-cycle Adam 0.003 or 0.01, and SGD 0.05 or 0.1
# with momentum at a constant rate).
RECIPES: dict[str, dict[str, Any]] = {
    "perceptron": {"optimizer": "sgd", "learning_rate": 0.01, "batch_size": 32, "epochs": 30},
    "hidden-relu": {"optimizer": "sgd", "learning_rate": 0.01, "batch_size": 32, "epochs": 30},
    "cross-entropy": {"optimizer": "sgd", "learning_rate": 0.01, "batch_size": 32,
                      "epochs": 30},
    "convnet": {"optimizer": "adam", "learning_rate": 0.001, "batch_size": 128, "epochs": 15},
    # The learning rate is the one-cycle schedule's peak (the schedule spans the epochs).
    "convnet-plus": {"optimizer": "adam", "learning_rate": 0.003, "batch_size": 128,
                     "epochs": 15, "schedule": "onecycle"},
    # The rate is a cosine decay's start (to 0 over the epochs).
    "lenet5": {"optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9, "batch_size": 128,
               "epochs": 10, "schedule": "cosine"},
    # tuomaso/train_mnist_fast's recipe (Adam 0.01 with betas 0.7 and 0.9, one-cycle, batch
    # 256, 2 epochs) with Keras' label smoothing 0.1, chosen on a validation split (trained
    # on the first 50,000 training images, validated on the last 10,000, seeds 0-2):
    # smoothing 0.1 gave 0.9927-0.9939 after 2 epochs against 0.9902-0.9913 without; an
    # average of the weights (use_ema, momentum 0.99) added nothing at the end of a one-cycle
    # schedule (0.9923-0.9933 with smoothing), so the recipe has none.
    "speedrun": {"optimizer": "adam", "learning_rate": 0.01, "beta_1": 0.7, "beta_2": 0.9,
                 "batch_size": 256, "epochs": 2, "schedule": "onecycle",
                 "label_smoothing": 0.1},
    # The same recipe over more epochs, for the wider net with random shifts (the same
    # validation split: 8 epochs gave 0.9960, 0.9949 and 0.9945 for seeds 0-2; 10 epochs
    # gave seed 0 the same 0.9960 in a quarter more time; the narrow net with shifts 0.9952).
    # Dropout 0.25 before the output layer: 0.9949 for seed 0, left out.
    "speedrun-plus": {"optimizer": "adam", "learning_rate": 0.01, "beta_1": 0.7,
                      "beta_2": 0.9, "batch_size": 256, "epochs": 8, "schedule": "onecycle",
                      "label_smoothing": 0.1},
}
# The settings of a recipe that are its optimizer's arguments, beyond its rate.
OPTIMIZER_OPTIONS = ("momentum", "beta_1", "beta_2", "use_ema", "ema_momentum")
MNIST_TRAIN_ROWS = 60_000


def recipe_optimizer(name: str, learning_rate: float | None = None,
                     rows: int = MNIST_TRAIN_ROWS) -> Optimizer:
    """The optimizer of a preset's recipe for `rows` training rows; learning_rate replaces
    the recipe's rate (a schedule's peak)."""
    recipe = RECIPES[name]
    rate = recipe["learning_rate"] if learning_rate is None else learning_rate
    steps = recipe["epochs"] * -(-rows // recipe["batch_size"])
    if recipe.get("schedule") == "onecycle":
        rate = OneCycle(rate, steps)
    elif recipe.get("schedule") == "cosine":
        rate = CosineDecay(rate, steps)
    return (Adam if recipe["optimizer"] == "adam" else SGD)(rate, **optimizer_options(name))


def optimizer_options(name: str) -> dict[str, Any]:
    """The arguments beyond the learning rate that the preset's recipe gives its optimizer
    (Adam's betas, SGD's momentum, use_ema and ema_momentum)."""
    return {key: value for key, value in RECIPES[name].items() if key in OPTIMIZER_OPTIONS}


def recipe_loss(name: str) -> str | Loss:
    """The preset's loss: its name, or a mnistnet.losses object when the recipe smooths the
    labels."""
    smoothing = RECIPES[name].get("label_smoothing")
    return (CategoricalCrossentropy(label_smoothing=smoothing) if smoothing
            else PRESETS[name]["loss"])


INPUT_DTYPES = ("float32", "uint8")


def preset(name: str, seed: int = 0, backend: str = "fast",
           learning_rate: float | None = None, optimizer: Optimizer | None = None,
           input_dtype: str = "float32", classes: int = 10) -> Model:
    """One of the tutorial's networks, or a convnet:

    - "perceptron": 784-10 sigmoid, MSE;
    - "hidden-relu": 784-128-64-10, relu/sigmoid, MSE;
    - "cross-entropy": the same with softmax and categorical cross-entropy;
    - "convnet": Keras' "Simple MNIST convnet" (Conv2D 32x3x3 relu, MaxPool2D 2, Conv2D
      64x3x3 relu, MaxPool2D 2, Flatten, Dropout 0.5, Dense 10 softmax) on (28, 28, 1);
    - "convnet-plus": RandomTranslation, three convolutions each with BatchNormalization,
      trained by Adam on a one-cycle schedule (see convnet_plus_layers);
    - "lenet5": LeCun et al.'s LeNet-5 of 1998 (see lenet5_layers);
    - "speedrun": 99.2% on the test set in 2 epochs (see speedrun_layers), trained by Adam
      (betas 0.7, 0.9) on a one-cycle schedule, batch 256, with label smoothing 0.1;
    - "speedrun-plus": 99.5%, the speedrun's net wider with random shifts, 8 epochs.

    Glorot-uniform weights; the optimizer of the preset's recipe (RECIPES: SGD 0.01 for the
    tutorial's three, Adam 0.001 for the convnet, Adam on OneCycle(0.003) over 15 epochs of
    MNIST's 60,000 images for convnet-plus, ...) unless `optimizer` is given; learning_rate
    replaces the recipe's rate. The loss is the recipe's (recipe_loss: the speedruns smooth
    the labels).

    input_dtype: "float32" (the default) takes pixels in [0, 1], as mn.load_mnist() gives
    them; "uint8" takes the images as they are stored, 0..255 (mn.datasets.load(name,
    normalize=False)): the model then starts with Rescaling(1/255), which fit and predict
    apply as they read each row, so no float copy of the data is ever made (a quarter of the
    memory), and it trains to the same weights, bit for bit, as the float32 preset on x / 255.

    classes: the output layer's units, one per class (10: MNIST's digits; 26 for EMNIST
    Letters, 47 for Balanced, ...).
    """
    spec = PRESETS[_choice(name, tuple(PRESETS), "preset")]
    _choice(input_dtype, INPUT_DTYPES, "input_dtype")
    classes = _positive_int(classes, "classes", minimum=2)
    if optimizer is None:
        optimizer = recipe_optimizer(name, learning_rate)
    elif learning_rate is not None:
        raise ValueError("give learning_rate or optimizer, not both")
    # Rescaling has no weights, so the initial weights (drawn in layer order) stay the same.
    rescaling = [Rescaling(1 / 255)] if input_dtype == "uint8" else []
    *hidden, output = spec["layers"]()
    output = Dense(classes, activation=output.activation)
    return Model([*rescaling, *hidden, output], input_shape=spec["input_shape"],
                 loss=recipe_loss(name), optimizer=optimizer, seed=seed, backend=backend)
