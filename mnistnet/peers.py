"""One peer framework's training of a mnistnet model's architecture, timed, in a process of
its own (what `mnistnet bench --peers` runs).

    python peers.py --framework torch|keras --config peer.json --data mnist.npz \\
        --epochs 1 --batch-size 128 --threads 2

A standalone script: it imports only numpy and the framework (never mnistnet), so it runs
with any Python that has them, and the framework's thread pools never share a process with
the timing of mnistnet. The config (mnistnet.bench.peer_config) says, layer by layer, what
each framework builds: the entries of mnistnet's table of kinds give a Keras layer (its class
in keras.layers and arguments) and the PyTorch modules (torch.nn's, or RandomTranslation and
Rescaling below); then the input shape, the loss, the optimizer and the learning rate of every
step (so any schedule is followed exactly). The data is an .npz of x_train, y_train, x_test,
y_test (float32 rows of pixels in [0, 1], integer labels). It prints one JSON object: the
framework and version, seconds per epoch (training, then the validation forward on the test
set, as mnistnet's fit does), and each epoch's accuracies.

Weights start Glorot-uniform with zero biases, as in Keras; PyTorch keeps its channels-first
layout (its Flatten order differs, which changes nothing timed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

# ---- PyTorch --------------------------------------------------------------------------------

TORCH_ACTIVATIONS = {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def torch_translation() -> Any:
    """RandomTranslation as mnistnet (and Keras with fill_mode="constant",
    interpolation="nearest") does it: each training image moved by whole pixels drawn from
    [h0, h1] x [w0, w1], the uncovered pixels `fill`; the identity in eval mode."""
    import torch
    from torch import nn

    class RandomTranslation(nn.Module):
        def __init__(self, shifts: list[int], fill: float) -> None:
            super().__init__()
            self.shifts, self.fill = shifts, fill

        def forward(self, x: Any) -> Any:
            if not self.training:
                return x
            n, _, h, w = x.shape
            h0, h1, w0, w1 = self.shifts
            dy = torch.randint(h0, h1 + 1, (n,), dtype=x.dtype)
            dx = torch.randint(w0, w1 + 1, (n,), dtype=x.dtype)
            theta = torch.zeros(n, 2, 3, dtype=x.dtype)
            theta[:, 0, 0] = theta[:, 1, 1] = 1
            theta[:, 0, 2], theta[:, 1, 2] = -2 * dx / w, -2 * dy / h
            grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
            out = nn.functional.grid_sample(x, grid, mode="nearest", align_corners=False)
            if self.fill:
                inside = nn.functional.grid_sample(torch.ones_like(x[:, :1]), grid,
                                                   mode="nearest", align_corners=False)
                out = out + self.fill * (1 - inside)
            return out

    return RandomTranslation


def torch_rescaling() -> Any:
    """Keras' Rescaling: x * scale + offset."""
    from torch import nn

    class Rescaling(nn.Module):
        def __init__(self, scale: float, offset: float) -> None:
            super().__init__()
            self.scale, self.offset = scale, offset

        def forward(self, x: Any) -> Any:
            return x * self.scale + self.offset

    return Rescaling


# The modules of this script's own, in place of torch.nn's.
OWN_MODULES = {"RandomTranslation": torch_translation, "Rescaling": torch_rescaling}


def torch_module(spec: dict[str, Any]) -> Any:
    """One module of a layer's spec, Glorot-uniform and zero bias where spec["init"]."""
    from torch import nn

    name = spec["module"]
    factory = OWN_MODULES[name]() if name in OWN_MODULES else getattr(nn, name)
    module = factory(*spec["args"], **spec["kwargs"])
    if spec.get("init"):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    return module


def torch_model(config: dict[str, Any]) -> Any:
    import torch
    from torch import nn

    modules: list[Any] = []
    layers = config["layers"]
    for i, layer in enumerate(layers):
        if layer["torch"] is None:
            raise ImportError(f"PyTorch has no counterpart of mnistnet's {layer['kind']}")
        modules += [torch_module(spec) for spec in layer["torch"]]
        act = layer["activation"]
        if act == "softmax":
            if i != len(layers) - 1 or config["loss"]["name"] != "categorical_crossentropy":
                modules.append(nn.Softmax(dim=1))
            # else: folded into CrossEntropyLoss on the logits (the same maths)
        elif act in TORCH_ACTIVATIONS:
            modules.append(getattr(nn, TORCH_ACTIVATIONS[act])())
    return torch.nn.Sequential(*modules)


def torch_optimizer(params: Any, spec: dict[str, Any]) -> Any:
    import torch

    lr, kind = spec["rates"][0], spec["class"]
    if kind in ("Adam", "AdamW"):
        options = {"betas": (spec["beta_1"], spec["beta_2"]), "eps": spec["epsilon"]}
        if kind == "AdamW":
            options["weight_decay"] = spec["weight_decay"]
        return getattr(torch.optim, kind)(params, lr=lr, **options)
    if kind == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=spec["rho"], eps=spec["epsilon"],
                                   momentum=spec["momentum"], centered=spec["centered"])
    return torch.optim.SGD(params, lr=lr, momentum=spec.get("momentum", 0.0),
                           nesterov=spec.get("nesterov", False))


def run_torch(config: dict[str, Any], data: dict[str, np.ndarray], epochs: int,
              batch_size: int, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_model(config)
    shape = list(config["input_shape"])
    view = (-1, shape[2], shape[0], shape[1]) if len(shape) == 3 else (-1, shape[0])
    classes = config["outputs"]

    def rows(name: str) -> Any:
        x = np.ascontiguousarray(data[name], dtype=np.float32)
        if len(shape) == 3:  # NHWC pixels to NCHW
            x = np.ascontiguousarray(x.reshape(-1, *shape).transpose(0, 3, 1, 2))
        return torch.from_numpy(x).reshape(view)

    x, xv = rows("x_train"), rows("x_test")
    labels = torch.from_numpy(data["y_train"].astype(np.int64))
    val_labels = torch.from_numpy(data["y_test"].astype(np.int64))
    smoothing = config["loss"].get("label_smoothing", 0.0)
    if config["loss"]["name"] == "categorical_crossentropy":
        loss_fn: Any = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
        target, val_target = labels, val_labels
    else:
        loss_fn = torch.nn.MSELoss()  # mean over rows and outputs, as Keras' MSE
        target = torch.nn.functional.one_hot(labels, classes).float()
        val_target = torch.nn.functional.one_hot(val_labels, classes).float()
    rates = config["optimizer"]["rates"]
    opt = torch_optimizer(net.parameters(), config["optimizer"])
    gen = torch.Generator().manual_seed(0)
    n, step, train_seconds, eval_seconds, accuracy, val_accuracy = x.shape[0], 0, [], [], [], []
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        correct = torch.zeros((), dtype=torch.int64)
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            for group in opt.param_groups:  # the schedule, step by step
                group["lr"] = rates[min(step, len(rates) - 1)]
            idx = perm[i: i + batch_size]
            out = net(x[idx])
            loss = loss_fn(out, target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            correct += (out.detach().argmax(1) == labels[idx]).sum()
        middle = time.perf_counter()
        net.eval()
        with torch.no_grad():
            val_correct = 0
            for i in range(0, xv.shape[0], 1000):
                val_out = net(xv[i: i + 1000])
                loss_fn(val_out, val_target[i: i + 1000]).item()
                val_correct += int((val_out.argmax(1) == val_labels[i: i + 1000]).sum())
        train_seconds.append(middle - start)
        eval_seconds.append(time.perf_counter() - middle)
        accuracy.append(int(correct) / n)
        val_accuracy.append(val_correct / xv.shape[0])
    return {"framework": "pytorch", "version": f"torch {torch.__version__}",
            "threads": torch.get_num_threads(), "train_seconds": train_seconds,
            "eval_seconds": eval_seconds, "accuracy": accuracy, "val_accuracy": val_accuracy}


# ---- Keras 3 --------------------------------------------------------------------------------

def keras_layer(spec: dict[str, Any]) -> Any:
    import keras

    config = dict(spec["config"])
    regularizer = config.pop("kernel_regularizer", None)
    if regularizer is not None:
        config["kernel_regularizer"] = keras.regularizers.L2(regularizer["l2"])
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return getattr(keras.layers, spec["class"])(**config)


def keras_model(config: dict[str, Any]) -> Any:
    import keras

    layers = [keras.Input(tuple(config["input_shape"]))]
    layers += [keras_layer(layer["keras"]) for layer in config["layers"]]
    return keras.Sequential(layers)


def keras_optimizer(spec: dict[str, Any]) -> Any:
    import keras

    class Rates(keras.optimizers.schedules.LearningRateSchedule):
        """The learning rate of every step, as mnistnet's schedule gives them."""

        def __init__(self, rates: list[float]) -> None:
            self.rates = keras.ops.convert_to_tensor(np.asarray(rates, np.float32))

        def __call__(self, step: Any) -> Any:
            last = keras.ops.shape(self.rates)[0] - 1
            return keras.ops.take(self.rates, keras.ops.minimum(step, last))

    options = {k: v for k, v in spec.items() if k not in ("class", "rates", "learning_rate")}
    rates = spec["rates"]
    rate = rates[0] if len(set(rates)) == 1 else Rates(rates)
    return getattr(keras.optimizers, spec["class"])(learning_rate=rate, **options)


def run_keras(config: dict[str, Any], data: dict[str, np.ndarray], epochs: int,
              batch_size: int, threads: int) -> dict[str, Any]:
    import keras

    if not keras.__version__.startswith("3"):
        raise ImportError(f"Keras 3 needed, found {keras.__version__}")
    keras.utils.set_random_seed(0)
    model = keras_model(config)
    loss = config["loss"]
    if loss["name"] == "categorical_crossentropy":
        loss_fn: Any = keras.losses.CategoricalCrossentropy(
            label_smoothing=loss.get("label_smoothing", 0.0))
    else:
        loss_fn = "mse"
    model.compile(optimizer=keras_optimizer(config["optimizer"]), loss=loss_fn,
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    shape = tuple(config["input_shape"])
    x = data["x_train"].reshape(-1, *shape)
    xv = data["x_test"].reshape(-1, *shape)
    eye = np.eye(config["outputs"], dtype=np.float32)
    times: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        """Seconds per epoch, validation included (on_epoch_end follows it)."""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.start)

    history = model.fit(x, eye[data["y_train"]], epochs=epochs, batch_size=batch_size,
                        validation_data=(xv, eye[data["y_test"]]), verbose=0, shuffle=True,
                        callbacks=[EpochTimer()])
    return {"framework": "keras",
            "version": f"keras {keras.__version__} ({keras.backend.backend()} backend)",
            "threads": threads, "train_seconds": times, "eval_seconds": [0.0] * len(times),
            "accuracy": history.history["accuracy"],
            "val_accuracy": history.history["val_accuracy"]}


RUNNERS = {"torch": run_torch, "keras": run_keras}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", choices=tuple(RUNNERS), required=True)
    parser.add_argument("--config", required=True,
                        help="the peer config as JSON (mnistnet.bench.peer_config)")
    parser.add_argument("--data", required=True,
                        help=".npz of x_train, y_train, x_test, y_test")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as f:
        config = json.load(f)
    with np.load(args.data) as archive:
        data = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    try:
        result = RUNNERS[args.framework](config, data, args.epochs, args.batch_size,
                                         args.threads)
    except ImportError as exc:
        print(json.dumps({"framework": args.framework, "unavailable": str(exc)}))
        return 0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
