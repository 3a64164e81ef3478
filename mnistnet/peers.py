"""One peer framework's training of a mnistnet model's architecture, timed, in a process of
its own (what `mnistnet bench --peers` runs).

    python peers.py --framework torch|keras --config peer.json --data mnist.npz \\
        --epochs 1 --batch-size 128 --threads 2 [--seed 0] [--target 0.992]

A standalone script: it imports only numpy and the framework (never mnistnet), so it runs
with any Python that has them, and the framework's thread pools never share a process with
the timing of mnistnet. The config (mnistnet.bench.peer_config) says, layer by layer, what
each framework builds: the entries of mnistnet's table of kinds give a Keras layer (its class
in keras.layers and arguments) and the PyTorch modules (torch.nn's, or RandomTranslation and
Rescaling below); then the input shape, the loss, the optimizer and the learning rate of every
step (so any schedule is followed exactly). The data is an .npz of x_train, y_train, x_test,
y_test (float32 rows of pixels in [0, 1], integer labels).

After every epoch the model is evaluated on the test set; with --target, training stops
after the first epoch whose test accuracy reaches it. It prints one JSON object: the
framework and version, the seed and target, per epoch the seconds of training (train_seconds,
evaluation excluded; Keras' first epoch includes fit's own setup) and of the evaluation
(eval_seconds), the training accuracy, the test accuracy and loss (val_accuracy, val_loss),
and whether EMA and label smoothing were applied (ema, label_smoothing).

The loss's label_smoothing and the optimizer's use_ema, ema_momentum and
ema_overwrite_frequency mean what they mean in Keras 3. Keras applies them itself (its
optimizer's use_ema; the test set evaluated on the averaged weights through
keras.callbacks.SwapEMAWeights, as the weights fit leaves are the averaged ones). PyTorch
smooths in CrossEntropyLoss (the same formula) and averages with
torch.optim.swa_utils.AveragedModel (Keras' EMA rule), evaluating the averaged model.

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


def torch_ema(net: Any, spec: dict[str, Any]) -> Any:
    """The averaged copy of `net` that Keras' use_ema keeps (None without use_ema): after
    every step average = ema_momentum * average + (1 - ema_momentum) * weights, the first
    step's weights copied as they are (Keras' rule, in torch.optim.swa_utils' EMA).
    Buffers (BatchNorm's moving statistics) are not averaged, as Keras averages only the
    trainable variables: sync_ema_buffers copies them before an evaluation."""
    if not spec.get("use_ema"):
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    momentum = spec.get("ema_momentum", 0.99)
    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(momentum))


def sync_ema_buffers(ema: Any, net: Any) -> None:
    """The net's current buffers into the averaged copy (AveragedModel keeps the ones of the
    moment it was made)."""
    for averaged, current in zip(ema.module.buffers(), net.buffers(), strict=True):
        averaged.copy_(current)


def overwrite_with_ema(ema: Any, net: Any) -> None:
    """The averaged weights into the net (Keras' ema_overwrite_frequency)."""
    import torch

    with torch.no_grad():
        for param, averaged in zip(net.parameters(), ema.module.parameters(), strict=True):
            param.copy_(averaged)


def torch_loss(config: dict[str, Any]) -> Any:
    """The loss module: cross-entropy on the logits (with the config's label smoothing,
    Keras' formula: targets (1 - s) * one_hot + s / classes), or the mean squared error over
    rows and outputs, as Keras'."""
    import torch

    loss = config["loss"]
    if loss["name"] == "categorical_crossentropy":
        return torch.nn.CrossEntropyLoss(label_smoothing=loss.get("label_smoothing") or 0.0)
    return torch.nn.MSELoss()


def torch_rows(data: dict[str, np.ndarray], name: str, shape: list[int]) -> Any:
    """The rows data[name] as a tensor the net takes: NCHW images or flat rows."""
    import torch

    x = np.ascontiguousarray(data[name], dtype=np.float32)
    if len(shape) == 3:  # NHWC pixels to NCHW
        x = np.ascontiguousarray(x.reshape(-1, *shape).transpose(0, 3, 1, 2))
        return torch.from_numpy(x)
    return torch.from_numpy(x).reshape(-1, shape[0])


def torch_targets(labels: Any, config: dict[str, Any]) -> Any:
    """Class indices for cross-entropy, one-hot rows for the MSE."""
    import torch

    if config["loss"]["name"] == "categorical_crossentropy":
        return labels
    return torch.nn.functional.one_hot(labels, config["outputs"]).float()


def torch_evaluate(net: Any, loss_fn: Any, x: Any, target: Any, labels: Any,
                   chunk: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy) of `net` on x, in eval mode, chunk rows at a time."""
    import torch

    net.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            out = net(x[i: i + chunk])
            loss_sum += float(loss_fn(out, target[i: i + chunk])) * out.shape[0]
            correct += int((out.argmax(1) == labels[i: i + chunk]).sum())
    return loss_sum / x.shape[0], correct / x.shape[0]


def run_torch(config: dict[str, Any], data: dict[str, np.ndarray], epochs: int,
              batch_size: int, threads: int, seed: int = 0,
              target: float | None = None) -> dict[str, Any]:
    """Train with a hand-written loop, the learning rate set at every step; after each
    epoch, evaluate on the test set (the averaged weights with use_ema). Stops after the
    first epoch whose test accuracy reaches `target`, if given. train_seconds exclude the
    evaluations; eval_seconds are theirs."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = torch_model(config)
    spec = config["optimizer"]
    opt = torch_optimizer(net.parameters(), spec)
    ema = torch_ema(net, spec)
    overwrite_every = spec.get("ema_overwrite_frequency") if ema is not None else None
    x, xv = torch_rows(data, "x_train", config["input_shape"]), torch_rows(
        data, "x_test", config["input_shape"])
    labels = torch.from_numpy(data["y_train"].astype(np.int64))
    val_labels = torch.from_numpy(data["y_test"].astype(np.int64))
    target_rows, val_target = torch_targets(labels, config), torch_targets(val_labels, config)
    loss_fn = torch_loss(config)
    rates = spec["rates"]
    gen = torch.Generator().manual_seed(seed)
    n, step = x.shape[0], 0
    logs: dict[str, list[float]] = {k: [] for k in (
        "train_seconds", "eval_seconds", "accuracy", "val_accuracy", "val_loss")}
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
            loss = loss_fn(out, target_rows[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if ema is not None:
                ema.update_parameters(net)
                if overwrite_every and step % overwrite_every == 0:
                    overwrite_with_ema(ema, net)
            correct += (out.detach().argmax(1) == labels[idx]).sum()
        middle = time.perf_counter()
        if ema is not None:
            sync_ema_buffers(ema, net)
        val_loss, val_acc = torch_evaluate(net if ema is None else ema.module, loss_fn, xv,
                                           val_target, val_labels)
        logs["train_seconds"].append(middle - start)
        logs["eval_seconds"].append(time.perf_counter() - middle)
        logs["accuracy"].append(int(correct) / n)
        logs["val_accuracy"].append(val_acc)
        logs["val_loss"].append(val_loss)
        if target is not None and val_acc >= target:
            break
    return {"framework": "pytorch", "version": f"torch {torch.__version__}",
            "threads": torch.get_num_threads(), "seed": seed, "target": target,
            "ema": ema is not None, "label_smoothing": loss_fn_smoothing(loss_fn), **logs}


def loss_fn_smoothing(loss_fn: Any) -> float:
    """The label smoothing a loss module applies (0.0 for the MSE)."""
    return float(getattr(loss_fn, "label_smoothing", 0.0))


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


def keras_clock(target: float | None) -> Any:
    """A callback that times fit without its evaluations: each epoch's train seconds run
    from fit's call (for the first) or the end of the previous evaluation to the start of
    this epoch's evaluation (on_test_begin), its eval seconds to on_test_end; it stops
    training after the first epoch whose val_accuracy reaches `target`, if given. Put it
    first among the callbacks, so that a SwapEMAWeights after it is timed as evaluation."""
    import keras

    class FitClock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.mark = time.perf_counter()
            self.train_seconds: list[float] = []
            self.eval_seconds: list[float] = []

        def on_test_begin(self, logs: Any = None) -> None:
            now = time.perf_counter()
            self.train_seconds.append(now - self.mark)
            self.mark = now

        def on_test_end(self, logs: Any = None) -> None:
            now = time.perf_counter()
            self.eval_seconds.append(now - self.mark)
            self.mark = now

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if target is not None and (logs or {}).get("val_accuracy", 0.0) >= target:
                self.model.stop_training = True

    return FitClock()


def keras_loss(config: dict[str, Any]) -> Any:
    """Categorical cross-entropy with the config's label smoothing, or the MSE."""
    import keras

    loss = config["loss"]
    if loss["name"] == "categorical_crossentropy":
        return keras.losses.CategoricalCrossentropy(
            label_smoothing=loss.get("label_smoothing") or 0.0)
    return keras.losses.MeanSquaredError()


def run_keras(config: dict[str, Any], data: dict[str, np.ndarray], epochs: int,
              batch_size: int, threads: int, seed: int = 0,
              target: float | None = None) -> dict[str, Any]:
    """Train with model.fit, validating on the test set after each epoch (on the averaged
    weights with use_ema: Keras' SwapEMAWeights swaps them in for the evaluation, as the
    weights fit leaves are the averaged ones). Stops after the first epoch whose test
    accuracy reaches `target`, if given. train_seconds exclude the evaluations."""
    import keras

    if not keras.__version__.startswith("3"):
        raise ImportError(f"Keras 3 needed, found {keras.__version__}")
    keras.utils.set_random_seed(seed)
    model = keras_model(config)
    optimizer = keras_optimizer(config["optimizer"])
    loss_fn = keras_loss(config)
    model.compile(optimizer=optimizer, loss=loss_fn,
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    shape = tuple(config["input_shape"])
    x = data["x_train"].reshape(-1, *shape)
    xv = data["x_test"].reshape(-1, *shape)
    eye = np.eye(config["outputs"], dtype=np.float32)
    clock = keras_clock(target)
    callbacks = [clock] + ([keras.callbacks.SwapEMAWeights()] if optimizer.use_ema else [])
    clock.mark = time.perf_counter()
    history = model.fit(x, eye[data["y_train"]], epochs=epochs, batch_size=batch_size,
                        validation_data=(xv, eye[data["y_test"]]), verbose=0, shuffle=True,
                        callbacks=callbacks)
    return {"framework": "keras",
            "version": f"keras {keras.__version__} ({keras.backend.backend()} backend)",
            "threads": threads, "seed": seed, "target": target, "ema": bool(optimizer.use_ema),
            "label_smoothing": float(getattr(loss_fn, "label_smoothing", 0.0) or 0.0),
            "train_seconds": clock.train_seconds, "eval_seconds": clock.eval_seconds,
            "accuracy": history.history["accuracy"],
            "val_accuracy": history.history["val_accuracy"],
            "val_loss": history.history["val_loss"]}


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
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the framework's weights, shuffles and dropout")
    parser.add_argument("--target", type=float, default=None,
                        help="stop after the first epoch whose test accuracy reaches this")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as f:
        config = json.load(f)
    with np.load(args.data) as archive:
        data = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    try:
        result = RUNNERS[args.framework](config, data, args.epochs, args.batch_size,
                                         args.threads, seed=args.seed, target=args.target)
    except ImportError as exc:
        print(json.dumps({"framework": args.framework, "unavailable": str(exc)}))
        return 0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
