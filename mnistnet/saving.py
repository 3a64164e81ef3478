"""Model files: .npz archives (never pickles), written atomically.

Format 2 (this version writes it):
    format_version    2
    config            JSON: {"layers": [{"class": "Conv2D", ...config}, ...],
                      "input_shape": [28, 28, 1], "output_shapes": [[26, 26, 32], ...],
                      "loss": ..., "optimizer": {"class": "Adam", ...}, "seed": ...,
                      and optionally "class_names": ["T-shirt/top", ...] and "dataset":
                      "fashion-mnist"}: a file without class names reads as digits "0",
                      "1", ...; older readers ignore both keys
    params            float32 (n_params,): the parameter block (kernels in Keras' shapes,
                      row-major, each followed by its bias), as mnistnet.plan lays it out
    optimizer_state   float32 (slots * n_params,): momentum's velocity, Adam's moments
    training          int64 [optimizer iterations, epochs trained]
    fit_batch_size    int64, optional: the batch size of the last fit (what a resumed
                      training needs to continue exactly: `mnistnet train --resume`)
    fit_validation_split  float64, optional: the last fit's validation_split, if any
    mnistnet_version  the writer's version
Format 1 (mnistnet 0.1; still read): Dense layers only, config {"layers": [{"units",
"activation"}], "input_dim", "loss", "optimizer": {"learning_rate"}, "seed"}, and params.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistnet._version import __version__
from mnistnet.kinds import layer_from_config
from mnistnet.plan import Plan, input_shape_of

if TYPE_CHECKING:
    from mnistnet.model import Model

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
REQUIRED = ("format_version", "config", "params")
# What a malformed config can raise while a model is rebuilt from it.
_BAD_CONFIG = (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError,
               IndexError)


def save_model(model: Model, path: str | os.PathLike) -> None:
    """Write `model` to path (see the module docstring): a temporary file in the same
    folder, flushed and synced, then renamed over path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    config = {**model.get_config(),
              "output_shapes": [list(s) for s in model.plan.shapes[1:]]}
    extra = ({} if model.fit_batch_size is None
             else {"fit_batch_size": np.array(model.fit_batch_size, dtype=np.int64)})
    if model.fit_validation_split is not None:
        extra["fit_validation_split"] = np.array(model.fit_validation_split, dtype=np.float64)
    fd, tmp = tempfile.mkstemp(prefix=".mnistnet-", suffix=".npz.tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, "wb") as f:
            np.savez(f, format_version=np.array(FORMAT_VERSION),
                     config=np.array(json.dumps(config)), params=model.params,
                     optimizer_state=model.optimizer_state,
                     training=np.array([model.optimizer.iterations, model.epochs_trained],
                                       dtype=np.int64),
                     mnistnet_version=np.array(__version__), **extra)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_model(path: str | os.PathLike, backend: str, model_class: type[Model]) -> Model:
    """Read a model file of format 1 or 2 as a model_class (Model.load's). Raises
    FileNotFoundError, or ValueError naming the file and what is wrong with it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a mnistnet model file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:
        # Corrupt or truncated archives, object arrays (refused: never unpickle), ...
        reason = "it holds Python objects" if "allow_pickle" in str(exc) else exc
        raise ValueError(f"{path}: not a mnistnet model file ({reason})") from None
    return model_from_arrays(arrays, path, backend, model_class)


def model_from_arrays(arrays: dict[str, Any], path: str, backend: str,
                      model_class: type[Model]) -> Model:
    """The model the arrays of a model file describe (see load_model)."""
    missing = set(REQUIRED) - set(arrays)
    if missing:
        raise ValueError(f"{path}: not a mnistnet model file (missing "
                         f"{', '.join(sorted(missing))})")
    for key in REQUIRED:
        if not isinstance(arrays[key], np.ndarray):
            raise ValueError(f"{path}: not a mnistnet model file ({key} is not an array)")
    version = arrays["format_version"]
    if version.shape != () or version.dtype.kind not in "iu":
        raise ValueError(f"{path}: bad format_version")
    if int(version) not in READABLE_VERSIONS:
        raise ValueError(f"{path}: format version {int(version)} is not supported "
                         f"(this mnistnet reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))})")
    try:
        config = json.loads(str(arrays["config"][()]))
        if int(version) == 1 and any("class" in layer for layer in config["layers"]):
            raise ValueError("a format 1 file has only Dense layers")
        # The plan alone (no weights allocated) gives the size the weights must have.
        layers, shape = _architecture(config)
        plan = Plan(layers, shape)
    except _BAD_CONFIG as exc:
        raise ValueError(f"{path}: bad architecture in the model file ({exc})") from None
    params = arrays["params"]
    if params.dtype != np.float32 or params.shape != (plan.n_params,):
        raise ValueError(f"{path}: weights have dtype {params.dtype} and shape "
                         f"{params.shape}; the architecture needs float32 ({plan.n_params},)")
    shapes = config.get("output_shapes")
    if shapes is not None and [list(s) for s in plan.shapes[1:]] != shapes:
        raise ValueError(f"{path}: bad architecture in the model file (it records layer "
                         f"output shapes {shapes}, the layers give {plan.shapes[1:]})")
    try:
        model = model_class.from_config(config, backend)
    except _BAD_CONFIG as exc:
        raise ValueError(f"{path}: bad architecture in the model file ({exc})") from None
    if not np.isfinite(params).all():
        raise ValueError(f"{path}: weights contain NaN or Inf")
    model.params[...] = params
    _restore_training(model, arrays, path)
    return model


def _architecture(config: dict[str, Any]):
    """(layers, input shape) from a config of either format, as Model.from_config reads it."""
    if not isinstance(config, dict):
        raise TypeError(f"the config is a {type(config).__name__}, not an object")
    layers = [layer_from_config(layer) for layer in config["layers"]]
    if not layers:
        raise ValueError("no layers")
    shape = config.get("input_shape")
    return layers, input_shape_of(layers, config["input_dim"] if shape is None else None, shape)


def _restore_training(model: Model, arrays: dict[str, Any], path: str) -> None:
    """The optimizer state and training position of a format 2 file, if it has them."""
    state = arrays.get("optimizer_state")
    if state is not None:
        if (not isinstance(state, np.ndarray) or state.dtype != np.float32
                or state.shape != model.optimizer_state.shape):
            raise ValueError(f"{path}: optimizer_state must be float32 "
                             f"{model.optimizer_state.shape} for {model.optimizer!r}, got "
                             f"{getattr(state, 'dtype', '?')} {getattr(state, 'shape', '?')}")
        if not np.isfinite(state).all():
            raise ValueError(f"{path}: optimizer_state contains NaN or Inf")
        model.optimizer_state[...] = state
    training = arrays.get("training")
    if training is not None:
        if (not isinstance(training, np.ndarray) or training.dtype.kind not in "iu"
                or training.shape != (2,) or training.min() < 0):
            raise ValueError(f"{path}: training must be two integers >= 0 (optimizer "
                             "iterations, epochs trained)")
        model.optimizer.iterations = int(training[0])
        model._epochs_done = int(training[1])
    batch_size = arrays.get("fit_batch_size")
    if batch_size is not None:
        if (not isinstance(batch_size, np.ndarray) or batch_size.dtype.kind not in "iu"
                or batch_size.shape != () or int(batch_size) < 1):
            raise ValueError(f"{path}: fit_batch_size must be an integer >= 1")
        model.fit_batch_size = int(batch_size)
    split = arrays.get("fit_validation_split")
    if split is not None:
        if (not isinstance(split, np.ndarray) or split.dtype.kind != "f" or split.shape != ()
                or not 0 < float(split) < 1):
            raise ValueError(f"{path}: fit_validation_split must be a number in (0, 1)")
        model.fit_validation_split = float(split)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
