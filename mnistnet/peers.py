"""One peer framework's training of a mnistnet model's architecture, timed, in a process of
its own (what `mnistnet bench --peers` runs).

    python peers.py --framework torch|keras --config model.json --data mnist.npz \\
        --epochs 1 --batch-size 128 --threads 2

A standalone script: it imports only numpy and the framework (never mnistnet), so it runs
with any Python that has them, and the framework's thread pools never share a process with
the timing of mnistnet. The config is mnistnet's Model.get_config() (layers with their
"class", input_shape, loss, optimizer); the data an .npz of x_train, y_train, x_test, y_test
(float32 rows of pixels in [0, 1], integer labels). It prints one JSON object: the
framework and version, seconds per epoch (training, then the validation forward on the test
set, as mnistnet's fit does), and the last epoch's accuracies.

The architectures are the same, layer by layer, with each framework's default weight
initialisation replaced by Glorot-uniform and zero biases as in Keras; PyTorch keeps its
channels-first layout (its Flatten order differs, which changes nothing timed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np


def keras_same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of Keras' "same" along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


# ---- PyTorch --------------------------------------------------------------------------------

def torch_model(config: dict[str, Any]) -> Any:
    import torch
    from torch import nn

    shape = list(config["input_shape"])
    layers: list[Any] = []
    channels_first = len(shape) == 3  # (c, h, w) as PyTorch lays images out
    size = [shape[2], shape[0], shape[1]] if channels_first else shape
    activations = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "linear": None}
    last = len(config["layers"]) - 1
    for i, spec in enumerate(config["layers"]):
        kind = spec["class"]
        if kind == "Conv2D":
            (kh, kw), (sh, sw) = spec["kernel_size"], spec["strides"]
            if spec["padding"] == "same":
                (pt, pb), (pl, pr) = (keras_same_padding(size[1], kh, sh),
                                      keras_same_padding(size[2], kw, sw))
                layers.append(nn.ZeroPad2d((pl, pr, pt, pb)))
                size = [size[0], size[1] + pt + pb, size[2] + pl + pr]
            conv = nn.Conv2d(size[0], spec["filters"], (kh, kw), stride=(sh, sw))
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
            layers.append(conv)
            size = [spec["filters"], (size[1] - kh) // sh + 1, (size[2] - kw) // sw + 1]
        elif kind == "MaxPool2D":
            (ph, pw), (sh, sw) = spec["pool_size"], spec["strides"]
            if spec["padding"] == "same":
                (pt, pb), (pl, pr) = (keras_same_padding(size[1], ph, sh),
                                      keras_same_padding(size[2], pw, sw))
                layers.append(nn.ConstantPad2d((pl, pr, pt, pb), float("-inf")))
                size = [size[0], size[1] + pt + pb, size[2] + pl + pr]
            layers.append(nn.MaxPool2d((ph, pw), stride=(sh, sw)))
            size = [size[0], (size[1] - ph) // sh + 1, (size[2] - pw) // sw + 1]
        elif kind == "Flatten":
            layers.append(nn.Flatten())
            size = [int(np.prod(size))]
        elif kind == "Dropout":
            layers.append(nn.Dropout(spec["rate"]))
        else:  # Dense
            dense = nn.Linear(size[0], spec["units"])
            nn.init.xavier_uniform_(dense.weight)
            nn.init.zeros_(dense.bias)
            layers.append(dense)
            size = [spec["units"]]
        act = spec.get("activation", "linear")
        if act == "softmax":
            if i != last or config["loss"] != "categorical_crossentropy":
                layers.append(nn.Softmax(dim=1))
            # else: folded into CrossEntropyLoss on the logits (the same maths)
        elif activations.get(act):
            layers.append(activations[act]())
    return torch.nn.Sequential(*layers)


def torch_optimizer(params: Any, spec: dict[str, Any]) -> Any:
    import torch

    if spec["class"] == "Adam":
        return torch.optim.Adam(params, lr=spec["learning_rate"],
                                betas=(spec["beta_1"], spec["beta_2"]), eps=spec["epsilon"])
    return torch.optim.SGD(params, lr=spec["learning_rate"],
                           momentum=spec.get("momentum", 0.0),
                           nesterov=spec.get("nesterov", False))


def run_torch(config: dict[str, Any], data: dict[str, np.ndarray], epochs: int,
              batch_size: int, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_model(config)
    shape = list(config["input_shape"])
    view = (-1, shape[2], shape[0], shape[1]) if len(shape) == 3 else (-1, shape[0])

    def rows(name: str) -> Any:
        x = np.ascontiguousarray(data[name], dtype=np.float32)
        if len(shape) == 3:  # NHWC pixels to NCHW
            x = np.ascontiguousarray(x.reshape(-1, *shape).transpose(0, 3, 1, 2))
        return torch.from_numpy(x).reshape(view)

    x, xv = rows("x_train"), rows("x_test")
    labels = torch.from_numpy(data["y_train"].astype(np.int64))
    val_labels = torch.from_numpy(data["y_test"].astype(np.int64))
    if config["loss"] == "categorical_crossentropy":
        loss_fn: Any = torch.nn.CrossEntropyLoss()
        target, val_target = labels, val_labels
    else:
        loss_fn = torch.nn.MSELoss()  # mean over rows and outputs, as Keras' MSE
        target = torch.nn.functional.one_hot(labels, 10).float()
        val_target = torch.nn.functional.one_hot(val_labels, 10).float()
    opt = torch_optimizer(net.parameters(), config["optimizer"])
    gen = torch.Generator().manual_seed(0)
    n, train_seconds, eval_seconds = x.shape[0], [], []
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        correct = torch.zeros((), dtype=torch.int64)
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i: i + batch_size]
            out = net(x[idx])
            loss = loss_fn(out, target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
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
    return {"framework": "pytorch", "version": f"torch {torch.__version__}",
            "threads": torch.get_num_threads(), "train_seconds": train_seconds,
            "eval_seconds": eval_seconds, "accuracy": int(correct) / n,
            "val_accuracy": val_correct / xv.shape[0]}


# ---- Keras 3 --------------------------------------------------------------------------------

def keras_model(config: dict[str, Any]) -> Any:
    import keras

    layers = [keras.Input(tuple(config["input_shape"]))]
    for spec in config["layers"]:
        options = {k: v for k, v in spec.items() if k != "class"}
        kind = {"MaxPool2D": "MaxPooling2D"}.get(spec["class"], spec["class"])
        if kind in ("Conv2D", "MaxPooling2D"):
            options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        layers.append(getattr(keras.layers, kind)(**options))
    return keras.Sequential(layers)


def keras_optimizer(spec: dict[str, Any]) -> Any:
    import keras

    options = {k: v for k, v in spec.items() if k != "class"}
    return getattr(keras.optimizers, spec["class"])(**options)


def run_keras(config: dict[str, Any], data: dict[str, np.ndarray], epochs: int,
              batch_size: int, threads: int) -> dict[str, Any]:
    import keras

    if not keras.__version__.startswith("3"):
        raise ImportError(f"Keras 3 needed, found {keras.__version__}")
    keras.utils.set_random_seed(0)
    model = keras_model(config)
    model.compile(optimizer=keras_optimizer(config["optimizer"]), loss=config["loss"],
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    shape = tuple(config["input_shape"])
    x = data["x_train"].reshape(-1, *shape)
    xv = data["x_test"].reshape(-1, *shape)
    eye = np.eye(10, dtype=np.float32)
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
            "accuracy": history.history["accuracy"][-1],
            "val_accuracy": history.history["val_accuracy"][-1]}


RUNNERS = {"torch": run_torch, "keras": run_keras}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", choices=tuple(RUNNERS), required=True)
    parser.add_argument("--config", required=True, help="Model.get_config() as JSON")
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
