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
    callback_state    JSON, optional: model.callback_state, the counters of EarlyStopping
                      and ReduceLROnPlateau ({"EarlyStopping:val_loss": {"mode", "wait",
                      "best", "best_epoch", "best_weights"}, ...}), each array in it
                      written as a member of its own and named there as {"array": name}
    callback_array_<i>  float32 (n_params,): such an array (EarlyStopping's best weights)
    ema_swapped       int64, optional (optimizers with use_ema): 1 when params hold the
                      moving average of the weights (as fit leaves them) and the average's
                      block of optimizer_state the weights training continues from
    mnistnet_version  the writer's version
Older readers of format 2 ignore the optional members they do not know, as this one ignores
states of callbacks it does not know.
Format 1 (mnistnet 0.1; still read): Dense layers only, config {"layers": [{"units",
"activation"}], "input_dim", "loss", "optimizer": {"learning_rate"}, "seed"}, and params.

Reading never unpickles, and refuses before reading: what is not a regular file (a device
such as /dev/zero, a FIFO, a socket, a folder), a file larger than this machine's memory, an
archive whose members would unpack to more than that (max_model_bytes()).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from mnistnet._version import __version__
from mnistnet.callbacks import check_state
from mnistnet.kinds import layer_from_config
from mnistnet.plan import Plan, input_shape_of, physical_memory

if TYPE_CHECKING:
    from mnistnet.model import Model

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
REQUIRED = ("format_version", "config", "params")
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an .npz is a zip archive (or an empty one)
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
    if model.callback_state:
        extra.update(_callback_members(model.callback_state))
    if model.optimizer.use_ema:
        extra["ema_swapped"] = np.array(int(model._ema_swapped), dtype=np.int64)
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
    with _open_model_file(path) as stream:
        if not stream.read(4).startswith(_ZIP_MAGICS) or not zipfile.is_zipfile(stream):
            raise ValueError(f"{path}: not a mnistnet model file (not an .npz archive)")
        _check_unpacked_size(stream, path)
        try:
            stream.seek(0)
            with np.load(stream, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except Exception as exc:
            # Corrupt or truncated archives, object arrays (refused: never unpickle), ...
            reason = "it holds Python objects" if "allow_pickle" in str(exc) else exc
            raise ValueError(f"{path}: not a mnistnet model file ({reason})") from None
    return model_from_arrays(arrays, path, backend, model_class)


def max_model_bytes() -> int:
    """The largest model file, and the most its arrays may unpack to: this machine's memory
    (a model larger than that could not be loaded anyway)."""
    return physical_memory()


def _open_model_file(path: str) -> BinaryIO:
    """path opened for reading, if it is a regular file no larger than max_model_bytes():
    a device, FIFO or socket (whose reads may wait forever or never end: /dev/zero) is
    refused before it is opened, and again after (it may have been swapped in between)."""
    try:
        _check_regular(os.stat(path), path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such model file") from None
    # O_NONBLOCK: opening a FIFO without a writer would wait; regular files ignore it.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _check_regular(os.fstat(fd), path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_regular(info: os.stat_result, path: str) -> None:
    """ValueError unless info is a regular file's, of a model file's possible size."""
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path}: not a mnistnet model file (it is {_file_kind(info)}, "
                         "not a regular file)")
    if info.st_size > max_model_bytes():
        raise ValueError(f"{path}: not a mnistnet model file ({info.st_size:,} bytes, more "
                         f"than this machine's memory, {max_model_bytes():,} bytes)")


def _file_kind(info: os.stat_result) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO or pipe"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(info.st_mode)), "a special file")


def _check_unpacked_size(stream: BinaryIO, path: str) -> None:
    """ValueError if the archive's members would unpack to more than max_model_bytes() (a
    small compressed file may unpack to terabytes), read from its directory alone."""
    try:
        stream.seek(0)
        with zipfile.ZipFile(stream) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except Exception as exc:  # corrupt directories raise many kinds (NotImplementedError, ...)
        raise ValueError(f"{path}: not a mnistnet model file ({exc})") from None
    if total > max_model_bytes():
        raise ValueError(f"{path}: not a mnistnet model file (its arrays would unpack to "
                         f"{total:,} bytes, more than this machine's memory, "
                         f"{max_model_bytes():,} bytes)")


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
    model.callback_state = _callback_state(arrays, path, model.plan.n_params)
    swapped = arrays.get("ema_swapped")
    if swapped is not None:
        if (not model.optimizer.use_ema or not isinstance(swapped, np.ndarray)
                or swapped.dtype.kind not in "iu" or swapped.shape != ()
                or int(swapped) not in (0, 1)):
            raise ValueError(f"{path}: ema_swapped must be 0 or 1, for an optimizer with "
                             "use_ema")
        model._ema_swapped = bool(swapped)


ARRAY_MEMBER = "callback_array_"


def _callback_members(states: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """The members that hold model.callback_state: its JSON, each array named in it by
    {"array": member} and written as that member."""
    members: dict[str, np.ndarray] = {}

    def encoded(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            name = f"{ARRAY_MEMBER}{len(members)}"
            members[name] = value
            return {"array": name}
        return value

    text = json.dumps({key: {field: encoded(value) for field, value in state.items()}
                       for key, state in states.items()})
    return {"callback_state": np.array(text), **members}


def _callback_state(arrays: dict[str, Any], path: str, n_params: int
                    ) -> dict[str, dict[str, Any]]:
    """model.callback_state from a file's members ({} without them), each state checked by
    mnistnet.callbacks.check_state; states of callbacks this version does not know are
    left out."""
    text = arrays.get("callback_state")
    if text is None:
        return {}
    try:
        states = json.loads(str(text[()])) if isinstance(text, np.ndarray) else None
        if not isinstance(states, dict) or not all(isinstance(s, dict)
                                                   for s in states.values()):
            raise ValueError("not an object of objects")
        decoded = {key: {field: _array_member(value, arrays) for field, value in state.items()}
                   for key, state in states.items()}
        return {key: state for key, state in decoded.items()
                if check_state(key, state, n_params)}
    except (ValueError, TypeError, RecursionError, IndexError) as exc:
        raise ValueError(f"{path}: bad callback_state in the model file ({exc})") from None


def _array_member(value: Any, arrays: dict[str, Any]) -> Any:
    """value, or the member it names as {"array": name}."""
    if isinstance(value, dict):
        name = value.get("array")
        if set(value) != {"array"} or not (isinstance(name, str)
                                           and name.startswith(ARRAY_MEMBER)
                                           and name in arrays):
            raise ValueError(f"{value!r} names no {ARRAY_MEMBER}<i> member")
        return arrays[name]
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
