"""Hyperparameter sweeps on Dask distributed: every combination of a grid of settings, each
trained as ``mnistnet train`` trains, on a cluster or in this process.

    pip install "mnistnet[dask]"

    from mnistnet.sweep import sweep
    table = sweep(grid={"lr": [0.003, 0.01, 0.03], "batch-size": [32, 128], "seed": [0, 1, 2]},
                  preset="cross-entropy", epochs=5, out="sweep.csv")
    table.best["run_id"], table.best["val_accuracy"]

Where the runs go (the ``scheduler`` argument, or ``client``):
- default: a ``distributed.LocalCluster`` on this machine, ``n_workers`` process workers (one
  per core by default) of one thread each, listening on 127.0.0.1 only, no dashboard; each
  worker's mnistnet runs one thread (MNISTNET_NUM_THREADS=1), so the workers share the cores
  without oversubscribing them;
- ``"tcp://HOST:8786"``: the cluster of a ``dask scheduler`` and its ``dask worker``s. Dask's
  nanny sets OMP_NUM_THREADS=1 in its workers, which mnistnet follows: one thread per
  training, as many trainings at once as the workers have threads;
- ``client=``: a ``distributed.Client`` of yours (left open);
- ``"sequential"``: no Dask at all, one run after the other in this process.

In a script, call sweep() under ``if __name__ == "__main__":``: the LocalCluster's workers
are new processes that import the main module (multiprocessing's "spawn" rule).

The data goes to the workers once: the client reads it (``dataset``, MNIST by default, or
another of mnistnet.datasets, from the folder ``data`` or where ``mnistnet.datasets.load``
looks; or the arrays themselves) and scatters it as uint8 to every worker, where it is
converted to float32 as ``load_mnist`` does, once per worker process. With
``data_on_workers=True`` each worker reads ``data`` (a folder on the workers) itself
instead. A preset's output layer gets one unit per class of the dataset, and the models
carry its class names.

A run validates as ``mnistnet train`` does: on the test split, or on the last
``validation_split`` of the training rows. The table (``out``, CSV; ``json_out``, JSON) holds
one row per run, keyed by ``run_id`` (its settings): the settings, ``status`` (ok, or diverged
when the loss became NaN or Inf), ``best`` (1 for the run with the highest final val_accuracy,
ties to the lower val_loss), the final val_accuracy and val_loss, ``seconds`` (the fit's wall
time on its worker), ``worker`` (its address), ``threads`` (mnistnet's threads there),
``weights_sha256`` (of the trained weights' bytes), ``data`` (of the data's bytes), then each
epoch's loss, accuracy, val_loss and val_accuracy as ``loss_1, accuracy_1, ..., val_accuracy_1,
loss_2, ...``. Rows are in grid order, whatever order the runs finish in.

Resumable and fault-tolerant:
- the table is rewritten (atomically: a temporary file renamed over it) as each run finishes,
  so Ctrl-C, or a crash of this process, leaves every finished run in it;
- rerunning with the same ``out`` trains only the runs whose ``run_id`` is not in it yet (a
  table of other data, by its ``data`` digest, is refused);
- a worker that dies takes its run with it: Dask's scheduler gives the run to another worker
  (up to ``distributed.scheduler.allowed-failures`` deaths, 3 by default), and the table,
  keyed by run_id, holds it once; ``retries`` more tries go to a run that raised.

Deterministic: mnistnet's training is the same bits at any thread count and in any process,
and a run here builds its model and optimizer as ``mnistnet train`` does, so a run's weights
(its ``weights_sha256``) are those of the same settings trained alone, here or with
``mnistnet train``. ``save_best`` writes the best run's model file: the worker sends the model
back, or, when the best run is from an earlier session, it is trained again and checked
against the table's digest.

The scikit-learn route works too, since a MNISTNetClassifier trains on as many threads as
OpenMP allows in the calling thread (see mnistnet.get_num_threads)::

    import joblib
    from distributed import Client, LocalCluster
    from sklearn.model_selection import GridSearchCV
    from mnistnet.sklearn import MNISTNetClassifier

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1") as cluster, \\
            Client(cluster), joblib.parallel_config("dask"):
        search = GridSearchCV(MNISTNetClassifier(epochs=5),
                              {"learning_rate": [0.003, 0.01, 0.03]}, cv=3).fit(x, y)

Dask's workers run with OMP_NUM_THREADS=1, which mnistnet follows, and every fit gives the
same bits there as here, so the search chooses as with n_jobs=1.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import itertools
import json
import math
import os
import secrets
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnistnet import datasets, fast
from mnistnet._files import write_text_atomically
from mnistnet.layers import Dense
from mnistnet.model import Model, loss_for_output
from mnistnet.optimizers import SGD, Adam, AdamW, Optimizer, RMSprop
from mnistnet.presets import RECIPES, preset
from mnistnet.schedules import OneCycle

__all__ = ["GRID_KEYS", "SEQUENTIAL", "Run", "SweepError", "SweepTable", "expand_grid",
           "sweep", "train_run"]

SEQUENTIAL = "sequential"
OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW,
                                          "rmsprop": RMSprop}
# What a --layers network trains with when the grid does not say (the CLI's defaults).
LAYERS_RECIPE = {"optimizer": "sgd", "learning_rate": 0.01, "batch_size": 32, "epochs": 30}
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
SETTINGS_COLUMNS = ("run_id", "preset", "layers", "optimizer", "lr", "batch_size", "epochs",
                    "seed", "validation_split")
RESULT_COLUMNS = ("status", "best", "val_accuracy", "val_loss", "seconds", "worker", "threads",
                  "weights_sha256", "data")
INSTALL_DASK = 'pip install "mnistnet[dask]"'
CONNECT_TIMEOUT = 10.0  # seconds for a scheduler to answer
RETRIES = 1  # more tries for a run that raised (a worker's death is Dask's to handle)


class SweepError(ValueError):
    """A sweep that cannot start or did not finish: bad settings, an unusable table or
    scheduler, runs that failed. The message is one line naming the problem and the fix."""


# --------------------------------------------------------------------------- the grid


def _number(value: Any, key: str, kind: type) -> Any:
    """value (a number, or its text from the command line) as an int or float."""
    wrong = SweepError(f"grid key {key}: {value!r} is not "
                       f"{'an integer' if kind is int else 'a number'}")
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            raise wrong from None
    numbers = (int, np.integer) if kind is int else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, numbers):
        raise wrong
    return kind(value)


def _check_preset(value: Any) -> str:
    if value not in RECIPES:
        raise SweepError(f"grid key preset: unknown preset {value!r}; valid: "
                         f"{', '.join(RECIPES)}")
    return value


def _check_layers(value: Any) -> str:
    if not isinstance(value, str):
        raise SweepError(f"grid key layers: {value!r} is not a text like 128:relu,10:softmax")
    dense_layers(value)
    return value.replace(" ", "")


def _check_optimizer(value: Any) -> str:
    if value not in OPTIMIZERS:
        raise SweepError(f"grid key optimizer: unknown optimizer {value!r}; valid: "
                         f"{', '.join(OPTIMIZERS)}")
    return value


def _check_lr(value: Any) -> float:
    rate = _number(value, "lr", float)
    if not math.isfinite(rate) or rate <= 0:
        raise SweepError(f"grid key lr: must be a finite number > 0, got {value!r}")
    return rate


def _check_count(key: str, minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        number = _number(value, key, int)
        if number < minimum:
            raise SweepError(f"grid key {key}: must be an integer >= {minimum}, got {value!r}")
        return number

    return check


# Each key, in the order runs are listed: its check (text or value in, canonical value out).
GRID_KEYS: dict[str, Callable[[Any], Any]] = {
    "preset": _check_preset,
    "layers": _check_layers,
    "optimizer": _check_optimizer,
    "lr": _check_lr,
    "batch_size": _check_count("batch_size", 1),
    "epochs": _check_count("epochs", 1),
    "seed": _check_count("seed", 0),
}


def _grid_key(key: Any) -> str:
    name = str(key).strip().replace("-", "_")
    if name not in GRID_KEYS:
        keys = ", ".join(k.replace("_", "-") for k in GRID_KEYS)
        raise SweepError(f"unknown grid key {key!r}; valid keys: {keys}")
    return name


def _split_text(key: str, text: str) -> list[str]:
    """A command line's values: comma-separated, but '/'-separated for layers (whose
    values hold commas)."""
    return [item.strip() for item in text.split("/" if key == "layers" else ",")]


def normalize_grid(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The grid with canonical keys ("batch-size" -> "batch_size") and checked values, each
    key's values without repeats; a text value is split as on the command line
    ("0.01,0.03"; layers alternatives by "/")."""
    if not isinstance(grid, Mapping) or not grid:
        raise SweepError("the grid is empty: give at least one KEY=VALUE,... (e.g. "
                         "seed=0,1,2); valid keys: "
                         + ", ".join(k.replace("_", "-") for k in GRID_KEYS))
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        name = _grid_key(key)
        if name in out:
            raise SweepError(f"grid key {name.replace('_', '-')} is given twice")
        if isinstance(values, str):
            values = _split_text(name, values)
        elif not isinstance(values, Iterable):
            values = [values]
        checked = [GRID_KEYS[name](v) for v in values if not (isinstance(v, str) and not v)]
        if not checked:
            raise SweepError(f"grid key {name.replace('_', '-')} has no values")
        out[name] = list(dict.fromkeys(checked))
    if "preset" in out and "layers" in out:
        raise SweepError("the grid has both preset and layers: a run is one or the other")
    return out


def dense_layers(text: str) -> tuple[list[Dense], str]:
    """"128:relu,64:relu,10:softmax" -> (Dense layers, loss): categorical cross-entropy
    after a softmax output, MSE otherwise. Dense stacks only; use a preset for convnets."""
    layers = []
    for item in text.split(","):
        units, _, activation = item.strip().partition(":")
        try:
            layers.append(Dense(int(units), activation=activation or "linear"))
        except (ValueError, TypeError) as exc:
            raise SweepError(f"grid key layers: {item.strip()!r} in {text!r}: {exc} (expected "
                             "UNITS:ACTIVATION,..., e.g. 128:relu,10:softmax)") from None
    return layers, loss_for_output(layers[-1].activation)


@dataclass(frozen=True)
class Run:
    """The settings of one training: a preset or a dense stack (``layers``), the optimizer
    and its learning rate (a schedule's peak where the preset has one), batch size, epochs,
    seed, and the validation split (None: validate on the test split)."""

    preset: str | None
    layers: str | None
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    seed: int
    validation_split: float | None = None

    @property
    def run_id(self) -> str:
        """The run's key in the table: its settings as one line."""
        parts = [self.preset or f"layers={self.layers}", self.optimizer, f"lr={self.lr!r}",
                 f"batch_size={self.batch_size}", f"epochs={self.epochs}", f"seed={self.seed}"]
        if self.validation_split:
            parts.append(f"validation_split={self.validation_split!r}")
        return " ".join(parts)

    def recipe(self) -> dict[str, Any]:
        return _recipe(self.preset)


def _recipe(preset_name: str | None) -> dict[str, Any]:
    """The preset's training recipe, or the defaults of a --layers network."""
    return RECIPES[preset_name] if preset_name else LAYERS_RECIPE


def expand_grid(grid: Mapping[str, Any], preset: str | None = None, layers: str | None = None,
                epochs: int | None = None, validation_split: float | None = None) -> list[Run]:
    """Every combination of the grid's values, in order (the last key varying fastest), as
    Runs; a setting the grid leaves out comes from the arguments, else from the preset's
    recipe (``mnistnet train``'s defaults: the recipe's optimizer, learning rate, batch size
    and epochs; an optimizer other than the recipe's starts at its Keras default rate)."""
    grid = normalize_grid(grid)
    if preset is not None and layers is not None:
        raise SweepError("give preset or layers, not both")
    fixed = {"preset": [_check_preset(preset)] if preset is not None else None,
             "layers": [_check_layers(layers)] if layers is not None else None,
             "epochs": [GRID_KEYS["epochs"](epochs)] if epochs is not None else None}
    if ("preset" in grid or "layers" in grid) and (preset or layers):
        raise SweepError("the architecture is given twice: by the grid's preset/layers and "
                         "by the preset or layers argument (--preset/--layers)")
    if not any(grid.get(k) or fixed[k] for k in ("preset", "layers")):
        raise SweepError("no network to train: give a preset or layers (--preset/--layers, "
                         "or a preset=... or layers=... grid key)")
    split = _check_split(validation_split)
    axes = {key: grid.get(key) or fixed.get(key) or [None] for key in GRID_KEYS}
    runs = [_run(dict(zip(axes, values, strict=True)), split)
            for values in itertools.product(*axes.values())]
    return list({run.run_id: run for run in runs}.values())


def _check_split(value: float | None) -> float | None:
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise SweepError(f"validation_split must lie in (0, 1), got {value!r}")
    return float(value)


def _run(settings: dict[str, Any], validation_split: float | None) -> Run:
    recipe = _recipe(settings["preset"])
    optimizer = settings["optimizer"] or recipe["optimizer"]
    lr = settings["lr"]
    if lr is None:  # as `mnistnet train`: the recipe's rate goes with the recipe's optimizer
        lr = (recipe["learning_rate"] if optimizer == recipe["optimizer"]
              else float(OPTIMIZERS[optimizer]().learning_rate))
    return Run(preset=settings["preset"], layers=settings["layers"], optimizer=optimizer,
               lr=lr, batch_size=settings["batch_size"] or recipe["batch_size"],
               epochs=settings["epochs"] or recipe["epochs"],
               seed=settings["seed"] if settings["seed"] is not None else 0,
               validation_split=validation_split)


# --------------------------------------------------------------------------- one run


def build_model(run: Run, n_train: int, input_dim: int, classes: int = 10) -> Model:
    """The run's model, built as ``mnistnet train`` builds it from the same options: the
    preset (or dense stack) with the optimizer at the run's rate, the recipe's schedule (a
    one-cycle) spanning the run's epochs of n_train rows; a preset's output layer of
    `classes` units."""
    rate: Any = run.lr
    if run.recipe().get("schedule") == "onecycle":
        rows = math.floor(n_train * (1.0 - run.validation_split)) if run.validation_split \
            else n_train
        rate = OneCycle(run.lr, run.epochs * max(1, -(-rows // run.batch_size)))
    optimizer = OPTIMIZERS[run.optimizer](rate)
    if run.preset is not None:
        return preset(run.preset, seed=run.seed, optimizer=optimizer, classes=classes)
    layers, loss = dense_layers(run.layers or "")
    return Model(layers, input_dim=input_dim, loss=loss, optimizer=optimizer, seed=run.seed)


def as_float_images(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], the very operation of load_mnist (so a run on
    scattered uint8 data sees the bits load_mnist() gives); other arrays as they are."""
    if x.dtype != np.uint8:
        return x
    flat = x.reshape(x.shape[0], -1)
    scaled = np.empty(flat.shape, dtype=np.float32)
    np.divide(flat, np.float32(255), out=scaled, dtype=np.float32)
    return scaled


def data_digest(data: Any) -> str:
    """sha256 (first 16 hex digits) of the four arrays' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for array in _four_arrays(data):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def weights_digest(model: Model) -> str:
    """sha256 of the model's weights, in get_weights() order, as float32 bytes."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _four_arrays(data: Any) -> list[np.ndarray]:
    try:
        (x_train, y_train), (x_test, y_test) = data
    except (TypeError, ValueError):
        raise SweepError("data must be a folder of the four MNIST files, or arrays as "
                         "load_mnist returns them: ((x_train, y_train), (x_test, y_test))"
                         ) from None
    return [np.asarray(a) for a in (x_train, y_train, x_test, y_test)]


@dataclass(frozen=True)
class DatasetFolder:
    """What a worker reads with data_on_workers: dataset `name`'s files in `folder`."""

    name: str
    folder: str


@dataclass
class _Prepared:
    """A worker process's data: float32 features, labels, the digest of what it came from,
    and its class names (None for bare arrays)."""

    source: Any
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    digest: str
    class_names: tuple[str, ...] | None = None
    dataset: str | None = None

    @property
    def classes(self) -> int:
        """The preset's output units: one per class (bare arrays: MNIST's 10, or more if
        the labels need them)."""
        if self.class_names is not None:
            return len(self.class_names)
        return max(10, int(max(self.y_train.max(), self.y_test.max())) + 1)


_PREPARED: list[_Prepared] = []  # the last data this process trained on (one entry at most)


def _prepared(data: Any) -> _Prepared:
    """The run's data, converted once per process: `data` is the scattered arrays (the same
    object for every run of a sweep on a worker) or a folder to read here."""
    if _PREPARED and (_PREPARED[0].source is data or (
            isinstance(data, DatasetFolder) and _PREPARED[0].source == data)):
        return _PREPARED[0]
    raw = (datasets.load(data.name, data.folder, normalize=False)
           if isinstance(data, DatasetFolder) else data)
    x_train, y_train, x_test, y_test = _four_arrays(raw)
    named = isinstance(raw, datasets.Dataset)
    prepared = _Prepared(data, as_float_images(x_train), y_train, as_float_images(x_test),
                         y_test, data_digest(raw), raw.class_names if named else None,
                         raw.name if named else None)
    _PREPARED[:] = [prepared]
    return prepared


def forget_data() -> None:
    """Let go of the data _prepared keeps (a process that ran a sweep's runs, after it)."""
    _PREPARED.clear()


def train_run(run: Run, data: Any, keep_model: bool = False) -> dict[str, Any]:
    """Train one run on `data` (arrays as load_mnist returns them, uint8 or float32, or a
    folder of MNIST files) and return its table row; with keep_model, the trained Model
    too (under "model"). Runs on a Dask worker, or anywhere."""
    d = _prepared(data)
    model = build_model(run, d.x_train.shape[0], int(np.prod(d.x_train.shape[1:])),
                        d.classes)
    if d.class_names is not None and model.n_outputs == len(d.class_names):
        model.class_names, model.dataset = d.class_names, d.dataset
    validation = ({"validation_split": run.validation_split} if run.validation_split
                  else {"validation_data": (d.x_test, d.y_test)})
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a NaN loss: status "diverged"
        history = model.fit(d.x_train, d.y_train, epochs=run.epochs,
                            batch_size=run.batch_size, verbose=0, **validation)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {
        **_settings_row(run),
        "status": "ok" if len(history.epoch) == run.epochs else "diverged",
        "seconds": round(seconds, 3), "worker": _worker_address(),
        "threads": fast.get_num_threads(), "weights_sha256": weights_digest(model),
        "data": d.digest,
        "history": {m: [float(v) for v in history.history.get(m, [])] for m in METRICS},
    }
    if keep_model:
        row["model"] = model
    return row


def _settings_row(run: Run) -> dict[str, Any]:
    return {"run_id": run.run_id, **asdict(run)}


def _worker_address() -> str:
    """The Dask worker running this, or "local" outside one."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


# --------------------------------------------------------------------------- the table


def _epoch_columns(n_epochs: int) -> list[str]:
    return [f"{m}_{e}" for e in range(1, n_epochs + 1) for m in METRICS]


_INT_COLUMNS = {"batch_size", "epochs", "seed", "best", "threads"}
_FLOAT_COLUMNS = {"lr", "validation_split", "val_accuracy", "val_loss", "seconds"}


@dataclass
class SweepTable:
    """The results: rows keyed by run_id, in the order they are listed, written to `path`
    (CSV) and `json_path` (JSON, optional) after every change."""

    path: Path
    json_path: Path | None = None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | os.PathLike, json_path: str | os.PathLike | None = None
             ) -> SweepTable:
        """The table at path, with the rows already there (none if it does not exist)."""
        table = cls(Path(path), Path(json_path) if json_path is not None else None)
        if table.path.exists():
            for row in _read_csv(table.path):
                table.rows[row["run_id"]] = row
                table.order.append(row["run_id"])
        return table

    @property
    def best(self) -> dict[str, Any] | None:
        """The row of the run with the highest final val_accuracy (ties: the lower val_loss,
        then the earlier row), among runs that did not diverge."""
        candidates = [(i, r) for i, r in enumerate(self.ordered())
                      if r["status"] == "ok" and r.get("val_accuracy") is not None]
        if not candidates:
            return None
        return min(candidates, key=lambda c: (-c[1]["val_accuracy"], c[1]["val_loss"],
                                              c[0]))[1]

    def ordered(self) -> list[dict[str, Any]]:
        return [self.rows[i] for i in self.order if i in self.rows]

    def list_runs(self, runs: Iterable[Run]) -> None:
        """Rows of these runs go in this order (after the rows already in the table)."""
        self.order.extend(r.run_id for r in runs if r.run_id not in self.order)

    def add(self, row: dict[str, Any]) -> None:
        """Record a finished run and rewrite the files."""
        history = row["history"]
        row = {k: v for k, v in row.items() if k != "model"}
        row["val_accuracy"] = history["val_accuracy"][-1] if history["val_accuracy"] else None
        row["val_loss"] = history["val_loss"][-1] if history["val_loss"] else None
        self.rows[row["run_id"]] = row
        if row["run_id"] not in self.order:
            self.order.append(row["run_id"])
        self.write()

    def write(self) -> None:
        best = self.best
        for row in self.rows.values():
            row["best"] = int(row is best)
        write_text_atomically(self.path, self.csv_text())
        if self.json_path is not None:
            write_text_atomically(self.json_path, self.json_text())

    def csv_text(self) -> str:
        rows = self.ordered()
        n_epochs = max((len(r["history"]["loss"]) for r in rows), default=0)
        columns = [*SETTINGS_COLUMNS, *RESULT_COLUMNS, *_epoch_columns(n_epochs)]
        stream = io.StringIO()
        writer = csv.DictWriter(stream, columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            flat = {c: _cell(row.get(c)) for c in (*SETTINGS_COLUMNS, *RESULT_COLUMNS)}
            for m in METRICS:
                for e, value in enumerate(row["history"][m], start=1):
                    flat[f"{m}_{e}"] = _cell(value)
            writer.writerow(flat)
        return stream.getvalue()

    def json_text(self) -> str:
        best = self.best
        record = {"best": best["run_id"] if best else None, "runs": self.ordered()}
        return json.dumps(record, indent=1) + "\n"


def _cell(value: Any) -> str:
    """A CSV cell: floats as repr (they read back as the same float), None empty."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            records = list(csv.DictReader(stream))
            header = records[0].keys() if records else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SweepError(f"{path}: cannot read it as a sweep table ({exc}); choose another "
                         "output file") from None
    if records and not {"run_id", "status", "data"} <= set(header):
        raise SweepError(f"{path} is not a sweep table (no run_id, status and data columns); "
                         "choose another output file")
    return [_parsed_row(record, path, line) for line, record in enumerate(records, start=2)]


def _parsed_row(record: dict[str, str], path: Path, line: int) -> dict[str, Any]:
    try:
        row: dict[str, Any] = {}
        for column in (*SETTINGS_COLUMNS, *RESULT_COLUMNS):
            text = record.get(column) or ""
            row[column] = (None if text == "" else int(text) if column in _INT_COLUMNS
                           else float(text) if column in _FLOAT_COLUMNS else text)
        row["history"] = {m: [] for m in METRICS}
        for e in itertools.count(1):
            if f"loss_{e}" not in record or not record[f"loss_{e}"]:
                break
            for m in METRICS:
                if record.get(f"{m}_{e}"):
                    row["history"][m].append(float(record[f"{m}_{e}"]))
    except (ValueError, TypeError) as exc:
        raise SweepError(f"{path}, line {line}: not a sweep table row ({exc}); choose another "
                         "output file") from None
    if not row["run_id"]:
        raise SweepError(f"{path}, line {line}: a row without run_id; choose another output "
                         "file")
    return row


def check_output_path(path: str | os.PathLike, what: str) -> Path:
    """Fail before any training if `path` cannot be written."""
    target = Path(path)
    folder = target.absolute().parent
    if not str(path):
        raise SweepError(f"{what}: empty file name")
    if target.is_dir():
        raise SweepError(f"{what} {path}: is a folder; name a file")
    if not folder.is_dir():
        raise SweepError(f"{what} {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise SweepError(f"{what} {path}: folder {folder} is not writable")
    return target


# --------------------------------------------------------------------------- the cluster


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise SweepError(f"sweeps on a cluster need Dask: {INSTALL_DASK} (or run them "
                         f"one after the other in this process: scheduler={SEQUENTIAL!r})"
                         ) from None
    return distributed


def probe_scheduler(address: str, timeout: float) -> None:
    """Fail within `timeout` seconds unless a Dask scheduler answers at a tcp:// address
    (Dask's own connect waits without end for a server that accepts and never speaks)."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return  # tls://, ws://, ...: the client's own timeout applies
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise SweepError(f"scheduler address {address!r}: expected tcp://HOST:PORT (e.g. "
                         "tcp://10.0.0.5:8786)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as probe:
            probe.settimeout(timeout)
            if not probe.recv(1):
                raise SweepError(f"scheduler {address}: closed the connection without a "
                                 "word; is it a Dask scheduler?")
    except TimeoutError:
        raise SweepError(f"scheduler {address}: no answer within {timeout:g} s; is a Dask "
                         "scheduler running there (dask scheduler --port PORT)?") from None
    except OSError as exc:
        raise SweepError(f"scheduler {address}: cannot connect ({exc.strerror or exc}); is a "
                         "Dask scheduler running there (dask scheduler --port PORT)?"
                         ) from None


@contextmanager
def _dask_client(client: Any, scheduler: str | None, n_workers: int | None,
                 timeout: float) -> Iterator[tuple[Any, str]]:
    """(client, description): the given client, one connected to `scheduler`, or one of a
    new LocalCluster; those made here are closed on the way out."""
    if client is not None:
        yield client, f"the cluster at {client.scheduler.address}"
        return
    distributed = _import_distributed()
    if scheduler is not None:
        probe_scheduler(scheduler, timeout)
        with distributed.Client(scheduler, timeout=timeout) as remote:
            _wait_for_workers(remote, scheduler, timeout)
            yield remote, f"the cluster at {scheduler}"
        return
    workers = n_workers or fast.available_cores()
    with _local_cluster(distributed, workers) as cluster, distributed.Client(cluster) as local:
        yield local, f"a LocalCluster of {workers} worker{'s' if workers != 1 else ''}"


def _local_cluster(distributed: Any, workers: int) -> Any:
    """A LocalCluster on 127.0.0.1 of `workers` processes of one thread each, mnistnet's one
    thread in each: the cores are shared out by processes, without oversubscription."""
    with warnings.catch_warnings():
        # No dashboard; the scheduler's bare HTTP server moves off a busy port 8787 itself.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                        processes=True, host="127.0.0.1",
                                        dashboard_address=None,
                                        env={"MNISTNET_NUM_THREADS": "1"})


def _wait_for_workers(client: Any, address: str, timeout: float) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, asyncio.TimeoutError):  # the same class from Python 3.11 on
        raise SweepError(f"scheduler {address} has no workers after {timeout:g} s; start "
                         f"some: dask worker {address}") from None


# --------------------------------------------------------------------------- the sweep


Progress = Callable[[int, int, dict[str, Any]], None]


def sweep(grid: Mapping[str, Any], *, out: str | os.PathLike, preset: str | None = None,
          layers: str | None = None, epochs: int | None = None, data: Any = None,
          dataset: str = "mnist",
          data_on_workers: bool = False, validation_split: float | None = None,
          client: Any = None, scheduler: str | None = None, n_workers: int | None = None,
          save_best: str | os.PathLike | None = None,
          json_out: str | os.PathLike | None = None,
          progress: bool | Progress = True, timeout: float = CONNECT_TIMEOUT,
          retries: int = RETRIES) -> SweepTable:
    """Train every combination of `grid` and write the results table (see the module's
    docstring for where runs go, the table, resume and determinism).

    Args:
        grid: {key: values} with keys preset, layers (dense stacks, "128:relu,10:softmax"),
            optimizer (sgd, adam, adamw, rmsprop), lr, batch_size (or "batch-size"),
            epochs, seed; a text value is split at commas (layers: at "/").
        out: the CSV table; rerunning with the same file trains only the runs missing.
        preset, layers: the network, unless the grid varies it.
        epochs: unless the grid varies it; default: the preset's recipe.
        data: a folder of the dataset's four files (default: where
            mnistnet.datasets.load looks), or the arrays ((x_train, y_train), (x_test,
            y_test)), uint8 or float32.
        dataset: which of mnistnet.datasets.NAMES `data` (a folder, or None) holds.
        data_on_workers: each worker reads the folder `data` itself (a path on the workers).
        validation_split: validate on this last fraction of the training rows instead of
            the test split, as ``mnistnet train --validation-split``.
        client: a distributed.Client to run on (not closed here).
        scheduler: "tcp://HOST:PORT" of a Dask scheduler, or "sequential" (this process,
            no Dask); default: a LocalCluster of n_workers (default: one per core).
        save_best: write the best run's model file here.
        json_out: also write the table as JSON here.
        progress: print a line per finished run (True), nothing (False), or call
            progress(finished, total, row) after each run.
        timeout: seconds a scheduler has to answer (and to have a worker).
        retries: more tries for a run that raised an exception.

    Returns the SweepTable (``.best``, ``.ordered()``). Raises SweepError for bad settings,
    an unusable table, data or scheduler, and, after the others have finished, for runs
    that failed; KeyboardInterrupt leaves the table with every finished run.
    """
    runs = expand_grid(grid, preset, layers, epochs, validation_split)
    table = SweepTable.open(check_output_path(out, "out"),
                            check_output_path(json_out, "json_out") if json_out else None)
    if save_best is not None:
        check_output_path(save_best, "save_best")
    if client is not None and scheduler is not None:
        raise SweepError("give client or scheduler, not both")
    report = _Reporter(progress)
    todo = [r for r in runs if r.run_id not in table.rows]
    table.list_runs(runs)
    payload = _payload(data, data_on_workers, dataset)
    if table.rows and not data_on_workers:  # fail before training, not after a run
        _check_same_data(table, data_digest(payload))
    report.note(f"{len(runs)} runs: {len(runs) - len(todo)} already in {table.path}, "
                f"{len(todo)} to train")
    keeper = _BestModel(table) if save_best is not None else None
    done = len(runs) - len(todo)
    if scheduler == SEQUENTIAL:
        failures = _run_here(todo, payload, table, keeper, report, done, len(runs))
    else:
        failures = _run_on_cluster(todo, payload, table, keeper, report, done, len(runs),
                                   client, scheduler, n_workers, timeout, retries,
                                   data_on_workers)
    table.write()  # also when nothing was trained: the header, the JSON, the best mark
    if failures:
        run, exc = failures[0]
        raise SweepError(f"{len(failures)} of {len(todo)} runs failed (first: {run.run_id}: "
                         f"{_one_line(exc)}); {table.path} holds the others; rerun to retry")
    if save_best is not None and keeper is not None:
        _save_best(table, keeper, save_best, payload, client, scheduler, n_workers, timeout)
    best = table.best
    if best is not None:
        report.note(f"best: {best['run_id']}: val_accuracy {best['val_accuracy']:.4f} "
                    f"(marked best in {table.path})")
    return table


def _payload(data: Any, data_on_workers: bool, dataset: str = "mnist") -> Any:
    """What the runs get: a DatasetFolder (data_on_workers) or the arrays, uint8 as read."""
    datasets.class_names(dataset)  # an unknown name: the error lists the known ones
    if data_on_workers:
        if data is None:
            raise SweepError(f"data_on_workers needs data: a folder of the {dataset} files, "
                             "present on every worker")
        return DatasetFolder(dataset, os.fspath(data))
    if data is None or isinstance(data, (str, os.PathLike)):
        return datasets.load(dataset, data, normalize=False)
    _four_arrays(data)
    return data


def _check_same_data(table: SweepTable, digest: str) -> None:
    other = next((r for r in table.rows.values() if r["data"] != digest), None)
    if other is not None:
        raise SweepError(f"{table.path} holds runs trained on other data (digest "
                         f"{other['data']}, now {digest}); write to another table")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Reporter:
    """Progress: lines on stdout (progress=True), nothing (False), or the caller's
    callback, called with (finished, total, row) after each run."""

    def __init__(self, progress: bool | Progress) -> None:
        self.prints = progress is True
        self.callback = progress if callable(progress) else None

    def note(self, message: str) -> None:
        if self.prints:
            print(message, flush=True)

    def finished(self, finished: int, total: int, row: dict[str, Any]) -> None:
        if self.callback is not None:
            self.callback(finished, total, row)
        if self.prints:
            accuracy = row.get("val_accuracy")
            score = f"val_accuracy {accuracy:.4f}" if accuracy is not None else "no val score"
            print(f"[{finished}/{total}] {row['run_id']}: {row['status']}, {score}, "
                  f"{row['seconds']:.1f} s on {row['worker']}", flush=True)


class _BestModel:
    """The model of the table's best run, when it was trained in this session."""

    def __init__(self, table: SweepTable) -> None:
        self.table = table
        self.run_id: str | None = None
        self.model: Model | None = None

    def offer(self, row: dict[str, Any]) -> None:
        best = self.table.best
        if best is not None and best["run_id"] == row["run_id"] and "model" in row:
            self.run_id, self.model = row["run_id"], row["model"]


def _record(row: dict[str, Any], table: SweepTable, keeper: _BestModel | None,
            report: _Reporter, finished: int, total: int) -> None:
    _check_same_data(table, row["data"])
    table.add(row)
    if keeper is not None:
        keeper.offer(row)
    report.finished(finished, total, table.rows[row["run_id"]])


def _run_here(todo: list[Run], payload: Any, table: SweepTable, keeper: _BestModel | None,
              report: _Reporter, done: int, total: int
              ) -> list[tuple[Run, BaseException]]:
    failures = []
    try:
        for run in todo:
            try:
                row = train_run(run, payload, keep_model=keeper is not None)
            except (ValueError, TypeError, RuntimeError, MemoryError, OSError) as exc:
                failures.append((run, exc))
                continue
            done += 1
            _record(row, table, keeper, report, done, total)
    finally:
        forget_data()
    return failures


def _run_on_cluster(todo: list[Run], payload: Any, table: SweepTable,
                    keeper: _BestModel | None, report: _Reporter, done: int, total: int,
                    client: Any, scheduler: str | None, n_workers: int | None, timeout: float,
                    retries: int, data_on_workers: bool) -> list[tuple[Run, BaseException]]:
    failures: list[tuple[Run, BaseException]] = []
    if not todo:
        return failures
    distributed = _import_distributed()
    with _dask_client(client, scheduler, n_workers, timeout) as (dask, where):
        report.note(f"training on {where}")
        # Once to every worker (not pickled into each task); a worker that joins later
        # fetches it from a peer.
        shared = payload if data_on_workers else dask.scatter([payload], broadcast=True,
                                                              hash=False)[0]
        futures = {dask.submit(train_run, run, shared, keeper is not None, retries=retries,
                               key=f"mnistnet-run-{secrets.token_hex(8)}"): run
                   for run in todo}
        try:
            for future in distributed.as_completed(futures):
                run = futures[future]
                try:
                    row = future.result()
                except Exception as exc:  # the run's own error, or KilledWorker
                    failures.append((run, exc))
                    continue
                done += 1
                _record(row, table, keeper, report, done, total)
        except BaseException:  # Ctrl-C, or a table that cannot be written: stop the rest
            dask.cancel(list(futures))
            raise
        # The workers of a cluster that stays up keep no converted copy of the data.
        dask.run(forget_data, on_error="ignore")
    return failures


def _save_best(table: SweepTable, keeper: _BestModel, path: str | os.PathLike, payload: Any,
               client: Any, scheduler: str | None, n_workers: int | None,
               timeout: float) -> None:
    best = table.best
    if best is None:
        raise SweepError(f"no run finished without diverging: {path} not written")
    model = keeper.model if keeper.run_id == best["run_id"] else None
    if model is None:  # the best run is from an earlier session: train it again
        run = Run(**{k: best[k] for k in Run.__dataclass_fields__})
        model = _retrain(run, payload, client, scheduler, n_workers, timeout)
    if weights_digest(model) != best["weights_sha256"]:
        raise SweepError(f"the best run ({best['run_id']}) trained again gives other weights "
                         f"than {table.path} records (data or mnistnet changed?); "
                         f"{path} not written")
    model.save(path)


def _retrain(run: Run, payload: Any, client: Any, scheduler: str | None,
             n_workers: int | None, timeout: float) -> Model:
    """The run trained again: here, unless its data is a folder on remote workers."""
    remote = client is not None or scheduler not in (None, SEQUENTIAL)
    if not (isinstance(payload, str) and remote):
        return train_run(run, payload, keep_model=True)["model"]
    with _dask_client(client, scheduler, n_workers, timeout) as (dask, _):
        return dask.submit(train_run, run, payload, True, pure=False).result()["model"]

