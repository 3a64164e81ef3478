"""Pictures of what a network learned: its first layer's weights, its learning curves, its
confusion matrix and its most confident mistakes. Needs matplotlib, the optional extra:
``pip install "mnistnet[plot]"``.

    import mnistnet as mn
    from mnistnet import plot

    model = mn.preset("perceptron")
    history = model.fit(x_train, y_train, epochs=3, validation_data=(x_test, y_test))
    plot.save(plot.weights(model), "weights.png")       # the ten digit templates
    plot.save(plot.history(history, preset="perceptron"), "history.svg")
    plot.save(plot.confusion(model, x_test, y_test), "confusion.png")

Each figure function returns a matplotlib Figure, which Jupyter shows inline as the last
line of a cell (no `%matplotlib inline` needed). The figures are drawn on matplotlib's Agg
canvas without pyplot: no backend is chosen or changed and no window opens, so this works
headless and leaves an interactive pyplot session alone. The
numbers behind each picture come from a function of their own: weight_images,
confusion_matrix, most_confident_mistakes, tutorial_curve.

On the command line (``mnistnet plot``): add_arguments and run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistnet._files import write_atomically
from mnistnet.layers import Conv2D, Dense
from mnistnet.model import Model
from mnistnet.presets import PRESETS
from mnistnet.trainer import History

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "class_label", "confusion", "confusion_matrix", "history", "mistakes",
    "most_confident_mistakes", "save", "tutorial_curve", "weight_images", "weights",
]

INSTALL_HINT = 'mnistnet.plot needs matplotlib: pip install "mnistnet[plot]"'
FORMATS = ("png", "svg")
PICTURES = ("weights", "confusion", "mistakes")
TUTORIAL_PRESETS = ("perceptron", "hidden-relu", "cross-entropy")
TUTORIAL_LABEL = "tutorial (Keras)"
TUTORIAL_LOGS = "tutorial_logs.csv"
METRICS = ("loss", "accuracy")
WEIGHT_COLOURS = "RdBu_r"  # diverging: red positive, blue negative, white zero
MAX_WEIGHT_PANELS = 128  # all of hidden-relu's first layer
DEFAULT_MISTAKES = 16
MISTAKE_COLUMNS = 8
SAVE_DPI = 120

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- matplotlib


def _new_figure(width: float, height: float) -> Figure:
    """An empty Figure on its own Agg canvas (never pyplot's) that Jupyter shows inline, or
    ImportError with the extra to install."""
    try:
        from mnistnet._figure import Figure
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return Figure(figsize=(width, height), layout="constrained")


def save(figure: Figure, path: PathLike) -> Path:
    """Write ``figure`` as PNG or SVG, as the file name's extension says, atomically (a
    temporary file in the same folder, then a rename). Returns the path written."""
    target = Path(path)
    file_format = target.suffix.lower().lstrip(".")
    if file_format not in FORMATS:
        raise ValueError(f"{path}: unknown picture format {target.suffix!r}; name the file "
                         f"*.png or *.svg")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=file_format, dpi=SAVE_DPI)
    write_atomically(target, buffer.getvalue())
    return target


def _panel_grid(figure: Figure, count: int, columns: int) -> list[Axes]:
    """``count`` axes without ticks in rows of ``columns``; the grid's unused cells hidden."""
    rows = math.ceil(count / columns)
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for ax in axes:
        ax.set_axis_off()
    return axes[:count]


# --------------------------------------------------------------------------- weights


def weight_images(model: Model) -> np.ndarray:
    """The first layer with weights as images, one per unit: float32 (units, height, width).

    Image i of a Dense layer is column i of its kernel (the weights from every input to
    unit i) laid out as the image its inputs come from: 28x28 for MNIST's rows of 784. Image
    f of a Conv2D layer is its filter f, kernel[:, :, :, f]. Where the input has several
    channels, each image is their mean (MNIST has one)."""
    return _first_layer_images(model)[0]


def _first_layer_images(model: Model) -> tuple[np.ndarray, int, int, Dense | Conv2D]:
    """weight_images, the number of input channels averaged, the layer's index and itself."""
    index, layer = _first_weighted_layer(model)
    # Its kernel: after the weights of any layer before it (a BatchNormalization's, say).
    before = sum(len(earlier.weight_shapes(shape))
                 for earlier, shape in zip(model.layers[:index], model.plan.shapes, strict=False))
    kernel = model.get_weights()[before]
    if isinstance(layer, Conv2D):
        per_unit = np.moveaxis(kernel, 3, 0)  # (filters, kh, kw, channels)
    else:
        height, width, channels = _dense_input_image_shape(model, index)
        per_unit = kernel.T.reshape(-1, height, width, channels)
    return per_unit.mean(axis=3), per_unit.shape[3], index, layer


def _first_weighted_layer(model: Model) -> tuple[int, Dense | Conv2D]:
    for index, layer in enumerate(model.layers):
        if isinstance(layer, (Dense, Conv2D)):
            return index, layer
    raise ValueError(f"{model!r} has no layer with weights to draw")


def _dense_input_image_shape(model: Model, index: int) -> tuple[int, int, int]:
    """(height, width, channels) of the image a Dense layer's inputs were flattened from:
    the last image shape with as many values before it (Flatten keeps the order), else a
    square of one channel."""
    inputs = model.plan.shapes[index][0]
    for shape in reversed(model.plan.shapes[:index]):
        if len(shape) == 3 and math.prod(shape) == inputs:
            return shape
    side = math.isqrt(inputs)
    if side * side != inputs:
        raise ValueError(f"the first layer's {inputs} inputs do not form an image (neither "
                         "flattened from one nor a square number); nothing to draw")
    return side, side, 1


def weights(model: Model, max_units: int = MAX_WEIGHT_PANELS) -> Figure:
    """The first layer's weights as images, one per unit (at most ``max_units``), on one
    shared symmetric colour scale (red positive, blue negative, white zero).

    For a network whose first layer is also its output layer (the perceptron), each unit
    belongs to one class and is labelled by it ("digit 7", or the class's name): the
    pictures are the templates the network compares every image with."""
    if max_units < 1:
        raise ValueError(f"max_units must be >= 1, got {max_units}")
    images, channels, index, layer = _first_layer_images(model)
    shown = images[:max_units]
    columns = math.ceil(math.sqrt(2 * len(shown)))  # about twice as wide as high
    rows = math.ceil(len(shown) / columns)
    figure = _new_figure(1.1 * columns + 1.2, 1.2 * rows + 0.9)
    limit = float(np.abs(shown).max()) or 1.0  # one scale: colours compare across panels
    per_class = index == len(model.layers) - 1 and len(images) == model.n_outputs
    for i, (ax, image) in enumerate(zip(_panel_grid(figure, len(shown), columns), shown,
                                        strict=True)):
        picture = ax.imshow(image, cmap=WEIGHT_COLOURS, vmin=-limit, vmax=limit,
                            interpolation="nearest")
        ax.set_title(class_label(model, i) if per_class else str(i),
                     fontsize=9 if per_class else 7)
    figure.colorbar(picture, ax=figure.axes, shrink=0.8, label="weight")
    figure.suptitle(_weights_title(layer, images, len(shown), channels,
                                   _noun(model) if per_class else None))
    return figure


def class_label(model: Model, c: int) -> str:
    """Class c as the pictures say it: "digit 7" for a model of digits, else its name."""
    return f"digit {c}" if model.reads_digits else model.class_names[c]


def _noun(model: Model) -> str:
    """What the model's classes are called in the pictures' titles and axes."""
    return "digit" if model.reads_digits else "class"


def _weights_title(layer: Dense | Conv2D, images: np.ndarray, shown: int, channels: int,
                   per_class: str | None) -> str:
    height, width = images.shape[1:]
    if isinstance(layer, Conv2D):
        title = f"First layer: {len(images)} convolution filters of {height}x{width}"
    elif per_class:
        title = (f"First layer: the weights into each {per_class}'s output, as "
                 f"{height}x{width} images")
    else:
        title = f"First layer: the weights into each of {len(images)} units, as " \
                f"{height}x{width} images"
    if shown < len(images):
        title += f" (the first {shown} of {len(images)})"
    if channels > 1:
        title += f", mean over {channels} input channels"
    return title


# --------------------------------------------------------------------------- learning curves


def tutorial_curve(preset: str) -> dict[str, np.ndarray]:
    """The per-epoch figures the tutorial published for one of its three Keras experiments
    (SGD 0.01, batch 32; epochs 1 to 20 of 30): arrays "epoch" (from 1), "accuracy", "loss",
    "val_accuracy", "val_loss", from the tutorial_logs.csv mnistnet ships."""
    if preset not in TUTORIAL_PRESETS:
        raise ValueError(f"the tutorial has no curve for {preset!r}; it has "
                         f"{', '.join(TUTORIAL_PRESETS)}")
    text = resources.files("mnistnet").joinpath(TUTORIAL_LOGS).read_text(encoding="utf-8")
    rows = [row for row in csv.DictReader(io.StringIO(text)) if row["preset"] == preset]
    columns = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss")
    return {name: np.array([float(row[name]) for row in rows]) for name in columns}


def history(h: History | Mapping[str, Any] | PathLike, preset: str | None = None,
            tutorial: bool = True) -> Figure:
    """Loss and accuracy per epoch, on the training and the validation data.

    ``h`` is what fit returned, its ``history`` dict, the record ``mnistnet train --history
    FILE.json`` writes (a dict), or that file's path. For the tutorial's presets
    (perceptron, hidden-relu, cross-entropy) the tutorial's published curve is drawn beside
    it, unless ``tutorial`` is false; ``preset`` names the preset, and defaults to the one the
    record names."""
    metrics, epochs, recorded_preset = _read_history(h)
    preset = recorded_preset if preset is None else preset
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    reference = tutorial_curve(preset) if tutorial and preset in TUTORIAL_PRESETS else None
    figure = _new_figure(10, 4)
    for ax, metric in zip(figure.subplots(1, 2), METRICS, strict=True):
        _draw_metric(ax, metric, epochs, metrics, reference)
    figure.suptitle("Learning curves" + (f": {preset}" if preset else "")
                    + (f", beside the {TUTORIAL_LABEL} run" if reference else ""))
    return figure


def _draw_metric(ax: Axes, metric: str, epochs: np.ndarray, metrics: Mapping[str, Any],
                 reference: Mapping[str, np.ndarray] | None) -> None:
    marker = "o" if len(epochs) <= 30 else None
    for key, label, colour in ((metric, "training", "C0"), (f"val_{metric}", "validation",
                                                            "C1")):
        if key in metrics:
            ax.plot(epochs, metrics[key], color=colour, marker=marker, markersize=3,
                    label=label)
        if reference is not None:
            ax.plot(reference["epoch"], reference[key], color=colour, linestyle="--",
                    alpha=0.6, label=f"{TUTORIAL_LABEL}, {label}")
    from matplotlib.ticker import MaxNLocator  # matplotlib is there: _new_figure checked

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _read_history(h: History | Mapping[str, Any] | PathLike
                  ) -> tuple[dict[str, list[float]], np.ndarray, str | None]:
    """(metrics by name, epoch numbers from 1, the record's preset or None) from any of the
    forms history() takes; ValueError if the metrics do not line up."""
    source = "the history"
    if isinstance(h, History):
        metrics, epochs, preset = h.history, h.epoch, None
    else:
        if isinstance(h, (str, os.PathLike)):
            source, h = os.fspath(h), _read_json(h)
        if not isinstance(h, Mapping):
            raise ValueError(f"{source}: expected a History, a dict of metrics or a --history "
                             f"record, got {type(h).__name__}")
        record = h if "history" in h else {"history": h}
        metrics, epochs, preset = record["history"], record.get("epoch"), record.get("preset")
    return _checked_metrics(metrics, epochs, source), _epoch_numbers(metrics, epochs), preset


def _read_json(path: PathLike) -> Any:
    with open(path, encoding="utf-8") as stream:
        try:
            return json.load(stream)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: not a JSON file ({exc})") from None


def _checked_metrics(metrics: Any, epochs: Sequence[int] | None,
                     source: str) -> dict[str, list[float]]:
    if not isinstance(metrics, Mapping) or not all(m in metrics for m in METRICS):
        raise ValueError(f"{source}: expected the metrics {', '.join(METRICS)} (a History's "
                         "history dict, or what 'mnistnet train --history' writes)")
    lengths = {name: len(values) for name, values in metrics.items()}
    if epochs is not None:
        lengths["epoch"] = len(epochs)
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{source}: the metrics have different lengths ({lengths})")
    return dict(metrics)


def _epoch_numbers(metrics: Mapping[str, Sequence[float]],
                   epochs: Sequence[int] | None) -> np.ndarray:
    """Epochs counted from 1, as Keras' log and the tutorial count them (fit's are 0-based)."""
    if epochs is None:
        return np.arange(1, len(metrics["loss"]) + 1)
    return np.asarray(epochs, dtype=np.int64) + 1


# --------------------------------------------------------------------------- confusion


def confusion_matrix(model: Model, x: np.ndarray, y: Sequence[int] | np.ndarray) -> np.ndarray:
    """Counts (classes, classes) int64: row = true class, column = predicted class (the
    output with the largest value)."""
    labels = _labels(y, len(x), model.n_outputs)
    predicted = np.argmax(model.predict(x), axis=1)
    classes = model.n_outputs
    return np.bincount(labels * classes + predicted,
                       minlength=classes * classes).reshape(classes, classes)


def _labels(y: Sequence[int] | np.ndarray, rows: int, classes: int) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"y must be integer labels of shape (n,), got {labels.dtype} "
                         f"{labels.shape}")
    if len(labels) != rows:
        raise ValueError(f"y has {len(labels)} labels but x has {rows} rows")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"y has labels outside 0..{classes - 1}")
    return labels.astype(np.int64)


def confusion(model: Model, x: np.ndarray, y: Sequence[int] | np.ndarray) -> Figure:
    """The confusion matrix as a picture: counts in the cells (shaded by the share of their
    row), each class's accuracy (recall) beside its row; the rows and columns are labelled
    with the model's class names."""
    counts = confusion_matrix(model, x, y)
    classes = len(counts)
    totals = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a class absent from y: no share
        shares = counts / totals[:, None]
        recall = np.diag(counts) / totals
    figure = _new_figure(9, 7)
    grid, side = figure.subplots(1, 2, gridspec_kw={"width_ratios": [classes, 2.5]})
    _draw_counts(grid, counts, shares, model.class_names, _noun(model))
    _draw_recall(side, recall, _noun(model))
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    figure.suptitle(f"Confusion matrix on {counts.sum():,} images: accuracy {accuracy:.1%}")
    return figure


def _draw_counts(ax: Axes, counts: np.ndarray, shares: np.ndarray, names: Sequence[str],
                 noun: str) -> None:
    classes = len(counts)
    ax.imshow(np.nan_to_num(shares), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (true, predicted), count in np.ndenumerate(counts):
        if count:
            dark = shares[true, predicted] > 0.5
            ax.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    long_names = max(len(name) for name in names) > 2
    ax.set_xticks(range(classes), names, rotation=90 if long_names else 0)
    ax.set_yticks(range(classes), names)
    ax.set_xlabel(f"predicted {noun}")
    ax.set_ylabel(f"true {noun}")


def _recall_axis_start(recall: np.ndarray) -> float:
    """Where the per-class accuracy axis starts: a multiple of 2% at least 1 point below the
    lowest share, so that 96.5% and 98.9% look different (from 0, all bars look full)."""
    shares = recall[~np.isnan(recall)]
    if len(shares) == 0:
        return 0.0
    return max(0.0, math.floor((float(shares.min()) - 0.01) * 50) / 50)


def _draw_recall(ax: Axes, recall: np.ndarray, noun: str) -> None:
    classes = len(recall)
    start = _recall_axis_start(recall)
    lengths = np.nan_to_num(recall, nan=start) - start
    ax.barh(range(classes), lengths, left=start, color="C2")
    for row, share in enumerate(recall):
        # Inside the bar's left end, white where the bar is long enough to hold it.
        long_bar = lengths[row] > 0.3 * (1 - start)
        ax.text(start + 0.02 * (1 - start), row, "-" if np.isnan(share) else f"{share:.1%}",
                va="center", fontsize=8, color="white" if long_bar else "black")
    ax.set_ylim(classes - 0.5, -0.5)  # the matrix's rows, top to bottom
    ax.set_yticks(range(classes))
    ax.set_xlim(start, 1)
    ax.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel(f"accuracy per {noun}" + (f"\n(axis from {start:.0%})" if start else ""))


# --------------------------------------------------------------------------- mistakes


def most_confident_mistakes(model: Model, x: np.ndarray, y: Sequence[int] | np.ndarray,
                            n: int = DEFAULT_MISTAKES
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n`` wrongly classified rows whose winning output is largest: (their indices
    into x, the classes predicted, the winning outputs), most confident first (ties: lower
    index first). Fewer than ``n`` if there are fewer mistakes."""
    return _rank_mistakes(*_readings(model, x, y), n)


def _readings(model: Model, x: np.ndarray, y: Sequence[int] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true labels, predicted classes, winning outputs) of every row."""
    labels = _labels(y, len(x), model.n_outputs)
    outputs = model.predict(x)
    predicted = np.argmax(outputs, axis=1)
    return labels, predicted, outputs[np.arange(len(outputs)), predicted]


def _rank_mistakes(labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
                   n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    wrong = np.flatnonzero(predicted != labels)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")[:n]]
    return chosen, predicted[chosen], confidence[chosen]


def mistakes(model: Model, x: np.ndarray, y: Sequence[int] | np.ndarray,
             n: int = DEFAULT_MISTAKES) -> Figure:
    """The ``n`` most confident mistakes as a grid of the images, each titled with its index
    in x, its true class, the class read (the model's class names) and the winning
    output. x as model.predict takes it (uint8 pixels for a model that starts with a
    Rescaling are drawn on their 0..255 scale)."""
    x = np.asarray(x)
    labels, predicted, confidence = _readings(model, x, y)
    chosen, chosen_classes, chosen_confidence = _rank_mistakes(labels, predicted, confidence, n)
    if len(chosen) == 0:
        figure = _new_figure(5, 1)
        figure.text(0.5, 0.5, f"No mistakes on these {len(x):,} images", ha="center",
                    va="center")
        return figure
    columns = min(MISTAKE_COLUMNS, len(chosen))
    figure = _new_figure(1.3 * columns + 0.4, 1.55 * math.ceil(len(chosen) / columns) + 0.7)
    panels = _panel_grid(figure, len(chosen), columns)
    white = 255 if x.dtype == np.uint8 else 1
    names = model.class_names
    for ax, image, index, read, p in zip(panels, _images(model, x[chosen]), chosen,
                                         chosen_classes, chosen_confidence, strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=white, interpolation="nearest")
        ax.set_title(f"#{index}: {names[labels[index]]}, read {names[read]}\np = {p:.2f}",
                     fontsize=8)
    wrong = int(np.count_nonzero(predicted != labels))
    figure.suptitle(f"The {len(chosen)} most confident of {wrong:,} mistakes on {len(x):,} "
                    f"images (#row: true {_noun(model)}, read as)")
    return figure


def _images(model: Model, x: np.ndarray) -> np.ndarray:
    """Rows of x as (n, height, width) images of the model's input (channels averaged)."""
    shape = tuple(model.input_shape)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise ValueError(f"the model's {shape[0]} inputs are not a square image")
        shape = (side, side, 1)
    return np.asarray(x).reshape(len(x), *shape).mean(axis=3)
