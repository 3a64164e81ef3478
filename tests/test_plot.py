"""mnistnet.plot: every picture renders to PNG and SVG, and the numbers behind each are what
it says they are (the weight images are the weights, the confusion matrix counts predict's
answers, the mistakes are mistakes, the curves have a point per epoch); `mnistnet plot`.

Small models on a few hundred rows: MNIST's test set from $MNISTNET_DATA, else synthetic
images. Skipped without matplotlib (the optional extra `mnistnet[plot]`), except that
MNISTNET_REQUIRE=plot makes a missing matplotlib a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mnistnet as mn
from mnistnet import plot
from mnistnet.cli import plot as plot_cli

try:
    import matplotlib  # noqa: F401 (only whether it is there)
except ImportError:
    HAVE_MATPLOTLIB = False
else:
    HAVE_MATPLOTLIB = True
needs_matplotlib = pytest.mark.skipif(
    not HAVE_MATPLOTLIB, reason='matplotlib is not installed (pip install "mnistnet[plot]")')
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROWS = 300
TIMEOUT = 120  # seconds for a subprocess


def required(what: str) -> bool:
    """True if MNISTNET_REQUIRE (comma-separated) lists `what`: skipping it is then a failure."""
    return what in os.environ.get("MNISTNET_REQUIRE", "").replace(" ", "").split(",")


def test_matplotlib_is_installed_when_required() -> None:
    if required("plot"):
        assert HAVE_MATPLOTLIB, "MNISTNET_REQUIRE=plot but matplotlib is missing"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """ROWS test images (x float32 (n, 784), y uint8): MNIST's if $MNISTNET_DATA is set,
    else noise with a bright bar whose position is the label (something to learn)."""
    path = os.environ.get("MNISTNET_DATA")
    if path:
        _, (x_test, y_test) = mn.load_mnist(path)
        return x_test[:ROWS], y_test[:ROWS]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, ROWS).astype(np.uint8)
    x = rng.random((ROWS, 28, 28), dtype=np.float32) * 0.3
    x[np.arange(ROWS), 4 + 2 * y.astype(int)] = 1.0
    return x.reshape(ROWS, 784), y


@pytest.fixture(scope="module")
def perceptron(data) -> mn.Model:
    x, y = data
    model = mn.preset("perceptron", learning_rate=0.5)
    model.fit(x, y, epochs=2, verbose=0)
    return model


def convnet() -> mn.Model:
    return mn.Model([mn.Conv2D(4, 3, activation="relu"), mn.MaxPool2D(2), mn.Flatten(),
                     mn.Dense(10, activation="softmax")], loss="categorical_crossentropy")


def fitted_history(data, epochs: int = 3) -> mn.History:
    x, y = data
    return mn.preset("perceptron").fit(x, y, epochs=epochs, validation_data=(x, y),
                                       verbose=0)


# --------------------------------------------------------------------------- weight images


def test_a_dense_first_layers_images_are_its_kernel_columns(perceptron) -> None:
    images = plot.weight_images(perceptron)
    kernel = perceptron.get_weights()[0]
    assert images.shape == (10, 28, 28)
    for unit in range(10):
        np.testing.assert_array_equal(images[unit], kernel[:, unit].reshape(28, 28))


def test_a_conv_first_layers_images_are_its_filters() -> None:
    model = convnet()
    kernel = model.get_weights()[0]
    images = plot.weight_images(model)
    assert images.shape == (4, 3, 3)
    for f in range(4):
        np.testing.assert_array_equal(images[f], kernel[:, :, 0, f])


def test_several_input_channels_are_averaged() -> None:
    conv = mn.Model([mn.Conv2D(3, 2), mn.Flatten(), mn.Dense(10)], input_shape=(6, 6, 2))
    np.testing.assert_allclose(plot.weight_images(conv),
                               conv.get_weights()[0].mean(axis=2).transpose(2, 0, 1))
    dense = mn.Model([mn.Flatten(), mn.Dense(5)], input_shape=(4, 6, 3))
    columns = dense.get_weights()[0].T.reshape(5, 4, 6, 3)
    np.testing.assert_allclose(plot.weight_images(dense), columns.mean(axis=3))


def test_a_dense_layer_after_pooling_is_drawn_at_the_pooled_size() -> None:
    model = mn.Model([mn.MaxPool2D(2), mn.Flatten(), mn.Dense(10)], input_shape=(28, 28, 1))
    assert plot.weight_images(model).shape == (10, 14, 14)


def test_inputs_that_are_no_image_are_refused() -> None:
    with pytest.raises(ValueError, match="50 inputs do not form an image"):
        plot.weight_images(mn.Model([mn.Dense(10)], input_dim=50))


# --------------------------------------------------------------------------- confusion, mistakes


def test_the_confusion_matrix_counts_predicts_answers(perceptron, data) -> None:
    x, y = data
    counts = plot.confusion_matrix(perceptron, x, y)
    expected = np.zeros((10, 10), dtype=np.int64)
    np.add.at(expected, (y, np.argmax(perceptron.predict(x), axis=1)), 1)
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == len(x)


def test_the_most_confident_mistakes_are_mistakes_most_confident_first(perceptron,
                                                                       data) -> None:
    x, y = data
    outputs = perceptron.predict(x)
    indices, predicted, confidence = plot.most_confident_mistakes(perceptron, x, y, n=12)
    assert len(indices) == 12
    np.testing.assert_array_equal(predicted, np.argmax(outputs[indices], axis=1))
    assert np.all(predicted != y[indices])
    np.testing.assert_array_equal(confidence, outputs[indices].max(axis=1))
    assert np.all(np.diff(confidence) <= 0)
    wrong = np.argmax(outputs, axis=1) != y
    assert confidence[-1] >= np.sort(outputs[wrong].max(axis=1))[-12]  # none more confident


def test_no_mistakes_and_fewer_than_asked(perceptron, data) -> None:
    x, _ = data
    answers = np.argmax(perceptron.predict(x), axis=1)
    indices, _, _ = plot.most_confident_mistakes(perceptron, x, answers)
    assert len(indices) == 0
    one_wrong = answers.copy()
    one_wrong[7] = (answers[7] + 1) % 10
    indices, _, _ = plot.most_confident_mistakes(perceptron, x, one_wrong, n=16)
    assert indices.tolist() == [7]


@pytest.mark.parametrize("labels", [np.zeros(ROWS, dtype=np.float32), np.zeros((ROWS, 10)),
                                    np.zeros(ROWS - 1, dtype=int), np.full(ROWS, 10)],
                         ids=["floats", "one-hot", "too few", "out of range"])
def test_bad_labels_are_refused(perceptron, data, labels) -> None:
    with pytest.raises(ValueError, match=r"^y "):
        plot.confusion_matrix(perceptron, data[0], labels)


# --------------------------------------------------------------------------- figures


def render(figure, tmp_path: Path, file_format: str, min_bytes: int = 10_000) -> bytes:
    """The figure saved through plot.save, checked to be a non-trivial PNG or SVG file."""
    path = plot.save(figure, tmp_path / f"picture.{file_format}")
    content = path.read_bytes()
    if file_format == "png":
        assert content.startswith(PNG_SIGNATURE)
    else:
        assert content.startswith(b"<?xml") and b"<svg" in content
    assert len(content) > min_bytes
    return content


def images_of(figure) -> list:
    return [image for ax in figure.axes for image in ax.get_images()]


@needs_matplotlib
@pytest.mark.parametrize("file_format", plot.FORMATS)
def test_the_weights_picture(perceptron, tmp_path, file_format) -> None:
    figure = plot.weights(perceptron)
    render(figure, tmp_path, file_format)
    panels = images_of(figure)
    assert len(panels) == 10
    limit = np.abs(perceptron.get_weights()[0]).max()
    for digit, panel in enumerate(panels):
        assert panel.get_clim() == pytest.approx((-limit, limit))  # one symmetric scale
        np.testing.assert_array_equal(panel.get_array(), plot.weight_images(perceptron)[digit])
        assert panel.axes.get_title() == f"digit {digit}"
    assert any(ax.get_label() == "<colorbar>" for ax in figure.axes)


@needs_matplotlib
def test_the_weights_picture_of_a_convnet_and_of_many_units(tmp_path) -> None:
    figure = plot.weights(convnet())
    assert len(images_of(figure)) == 4
    assert "4 convolution filters of 3x3" in figure.get_suptitle()
    wide = mn.Model([mn.Dense(40, activation="relu"), mn.Dense(10)], input_dim=784)
    figure = plot.weights(wide, max_units=12)
    assert len(images_of(figure)) == 12
    assert "(the first 12 of 40)" in figure.get_suptitle()
    assert images_of(figure)[3].axes.get_title() == "3"  # hidden units are not digits


@needs_matplotlib
@pytest.mark.parametrize("file_format", plot.FORMATS)
def test_the_confusion_picture(perceptron, data, tmp_path, file_format) -> None:
    x, y = data
    figure = plot.confusion(perceptron, x, y)
    render(figure, tmp_path, file_format)
    counts = plot.confusion_matrix(perceptron, x, y)
    grid, side = figure.axes
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text())
             for t in grid.texts}
    assert cells == {(i, j): int(c) for (i, j), c in np.ndenumerate(counts) if c}
    recall = np.diag(counts) / counts.sum(axis=1)
    bar_ends = [patch.get_x() + patch.get_width() for patch in side.patches]
    np.testing.assert_allclose(bar_ends, np.nan_to_num(recall))
    assert f"{np.trace(counts) / len(x):.1%}" in figure.get_suptitle()


@needs_matplotlib
def test_the_per_digit_bars_show_small_differences_and_their_values(
        perceptron, data, monkeypatch) -> None:
    """Digits read right 96.5% and 98.9% of the time: their bars differ visibly (the axis
    starts near the lowest share, not at 0) and each bar is labelled with its value."""
    recall = np.array([0.965, 0.989, 0.97, 0.975, 0.98, 0.99, 0.985, 0.972, 0.968, 0.979])
    right = np.round(recall * 1000).astype(np.int64)
    counts = np.diag(right)
    counts[np.arange(10), (np.arange(10) + 1) % 10] = 1000 - right  # the rest read as d + 1
    monkeypatch.setattr(plot, "confusion_matrix", lambda model, x, y: counts)
    x, y = data
    _, side = plot.confusion(perceptron, x, y).axes
    low, high = side.get_xlim()
    assert high == 1 and 0.8 <= low < recall.min()
    lengths = {digit: (patch.get_x() + patch.get_width() - low) / (high - low)
               for digit, patch in enumerate(side.patches)}
    assert lengths[1] - lengths[0] > 0.15, lengths  # 2.4 points apart show
    assert [t.get_text() for t in side.texts] == [f"{share:.1%}" for share in recall]
    assert "axis from" in side.get_xlabel()


@needs_matplotlib
@pytest.mark.parametrize("file_format", plot.FORMATS)
def test_the_mistakes_picture(perceptron, data, tmp_path, file_format) -> None:
    x, y = data
    figure = plot.mistakes(perceptron, x, y, n=10)
    render(figure, tmp_path, file_format)
    indices, predicted, confidence = plot.most_confident_mistakes(perceptron, x, y, n=10)
    panels = images_of(figure)
    assert len(panels) == len(indices) == 10
    for panel, index, digit, p in zip(panels, indices, predicted, confidence, strict=True):
        np.testing.assert_array_equal(panel.get_array(), x[index].reshape(28, 28))
        assert panel.axes.get_title() == f"#{index}: {y[index]}, read {digit}\np = {p:.2f}"


@needs_matplotlib
def test_the_mistakes_picture_without_mistakes(perceptron, data, tmp_path) -> None:
    x, _ = data
    figure = plot.mistakes(perceptron, x, np.argmax(perceptron.predict(x), axis=1))
    render(figure, tmp_path, "png", min_bytes=2_000)
    assert [t.get_text() for t in figure.texts] == [f"No mistakes on these {ROWS} images"]


def lines_of(figure) -> dict[tuple[str, str], np.ndarray]:
    """{(metric, line label): (x, y) data} of a history figure."""
    return {(ax.get_ylabel(), line.get_label()): np.array(line.get_data())
            for ax in figure.axes for line in ax.get_lines()}


@needs_matplotlib
@pytest.mark.parametrize("file_format", plot.FORMATS)
def test_the_history_picture_has_a_point_per_epoch(data, tmp_path, file_format) -> None:
    history = fitted_history(data, epochs=3)
    figure = plot.history(history)
    render(figure, tmp_path, file_format)
    lines = lines_of(figure)
    assert set(lines) == {(m, s) for m in ("loss", "accuracy") for s in ("training",
                                                                         "validation")}
    for (metric, label), (epochs, values) in lines.items():
        key = metric if label == "training" else f"val_{metric}"
        np.testing.assert_array_equal(epochs, [1, 2, 3])
        np.testing.assert_array_equal(values, history.history[key])


@needs_matplotlib
def test_the_history_picture_beside_the_tutorials(data, tmp_path) -> None:
    history = fitted_history(data, epochs=2)
    record = {"history": history.history, "epoch": history.epoch, "preset": "perceptron"}
    path = tmp_path / "history.json"
    path.write_text(json.dumps(record))
    for figure in (plot.history(path), plot.history(record),
                   plot.history(history, preset="perceptron")):
        lines = lines_of(figure)
        tutorial = lines[("accuracy", "tutorial (Keras), validation")]
        np.testing.assert_array_equal(tutorial, [range(1, 21),
                                                 plot.tutorial_curve("perceptron")[
                                                     "val_accuracy"]])
        assert lines[("loss", "training")].shape == (2, 2)
    assert len(lines_of(plot.history(path, tutorial=False))) == 4
    assert len(lines_of(plot.history(history.history, preset="convnet"))) == 4


def test_the_shipped_tutorial_curve() -> None:
    curve = plot.tutorial_curve("cross-entropy")
    assert curve["epoch"].tolist() == list(range(1, 21))
    assert set(curve) == {"epoch", "accuracy", "loss", "val_accuracy", "val_loss"}
    assert curve["val_accuracy"][-1] > 0.95 and curve["loss"][0] > curve["loss"][-1]
    assert plot.tutorial_curve("perceptron")["accuracy"][0] == 0.2274
    with pytest.raises(ValueError, match="no curve for 'convnet'"):
        plot.tutorial_curve("convnet")


@needs_matplotlib
@pytest.mark.parametrize(("history", "message"), [
    ({"loss": [1.0, 0.5]}, "expected the metrics loss, accuracy"),
    ({"loss": [1.0, 0.5], "accuracy": [0.5]}, "different lengths"),
    ({"history": {"loss": [1.0], "accuracy": [0.5]}, "epoch": [0, 1]}, "different lengths"),
    ([1, 2], "expected a History"),
])
def test_a_history_that_does_not_line_up_is_refused(history, message) -> None:
    with pytest.raises(ValueError, match=message):
        plot.history(history)


@needs_matplotlib
def test_a_history_file_that_is_no_json_is_refused(tmp_path) -> None:
    (tmp_path / "h.json").write_text("{")
    with pytest.raises(ValueError, match=r"h\.json: not a JSON file"):
        plot.history(tmp_path / "h.json")
    with pytest.raises(ValueError, match="unknown preset 'nonsense'"):
        plot.history({"loss": [1.0], "accuracy": [0.5]}, preset="nonsense")


# --------------------------------------------------------------------------- save


@needs_matplotlib
def test_save_replaces_a_file_whole_and_leaves_nothing_else(perceptron, tmp_path) -> None:
    target = tmp_path / "weights.png"
    target.write_bytes(b"old")
    assert plot.save(plot.weights(perceptron), target) == target
    assert target.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in tmp_path.iterdir()] == ["weights.png"]


@needs_matplotlib
def test_save_refuses_an_unknown_format_and_a_missing_folder(perceptron, tmp_path) -> None:
    figure = plot.weights(perceptron)
    with pytest.raises(ValueError, match=r"unknown picture format '\.jpg'"):
        plot.save(figure, tmp_path / "weights.jpg")
    with pytest.raises(FileNotFoundError):
        plot.save(figure, tmp_path / "missing" / "weights.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(OSError):  # the rename fails: the temporary file goes
        plot.save(figure, tmp_path / "folder.png")
    assert [p.name for p in tmp_path.iterdir()] == ["folder.png"]


# --------------------------------------------------------------------------- without pyplot


def run_python(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # From an empty folder: the installed mnistnet, never the source tree.
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)


@needs_matplotlib
def test_pictures_leave_pyplot_and_the_backend_alone(tmp_path) -> None:
    script = """
import sys
import matplotlib
matplotlib.use("svg")  # a user's own choice, which drawing must not change
import mnistnet as mn
from mnistnet import plot
plot.save(plot.weights(mn.preset("perceptron")), "w.png")
print("matplotlib.pyplot" in sys.modules, matplotlib.get_backend())
"""
    result = run_python(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "svg"]


def test_a_missing_matplotlib_names_the_extra(tmp_path) -> None:
    script = """
import sys
sys.modules["matplotlib"] = None  # as if not installed
import mnistnet as mn
from mnistnet import plot
try:
    plot.weights(mn.preset("perceptron"))
except ImportError as exc:
    print(exc)
"""
    result = run_python(script, tmp_path)
    assert result.stdout == 'mnistnet.plot needs matplotlib: pip install "mnistnet[plot]"\n'


# --------------------------------------------------------------------------- mnistnet plot


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of uint8 values: magic 0 0 8 ndim, big-endian dimensions, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def dataset(tmp_path, data) -> Path:
    """The test rows as a four-file MNIST folder (the same rows as the training split)."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    x, y = data
    images = np.round(x * 255).reshape(-1, 28, 28)
    for split in ("train", "t10k"):
        write_idx(folder / f"{split}-images-idx3-ubyte", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte", y)
    return folder


def plot_command(*argv: str | Path) -> int:
    args = plot_cli.add_arguments(argparse.ArgumentParser()).parse_args(
        [str(a) for a in argv])
    return plot_cli.run(args)


@needs_matplotlib
def test_the_command_draws_every_picture(perceptron, data, dataset, tmp_path, capsys) -> None:
    perceptron.save(tmp_path / "model.npz")
    history = fitted_history(data, epochs=2)
    record = {"history": history.history, "epoch": history.epoch, "preset": "perceptron"}
    (tmp_path / "h.json").write_text(json.dumps(record))
    out = tmp_path / "pictures"
    assert plot_command(tmp_path / "model.npz", "--history", tmp_path / "h.json", "--out", out,
                        "--data", dataset) == 0
    names = ["weights.png", "confusion.png", "mistakes.png", "history.png"]
    assert capsys.readouterr().out.splitlines() == [str(out / name) for name in names]
    for name in names:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)


@needs_matplotlib
def test_the_command_makes_missing_folders(perceptron, tmp_path, capsys) -> None:
    perceptron.save(tmp_path / "model.npz")
    out = tmp_path / "pictures" / "perceptron"
    assert plot_command(tmp_path / "model.npz", "--what", "weights", "--out", out) == 0
    assert capsys.readouterr().out == f"{out / 'weights.png'}\n"


@needs_matplotlib
def test_figures_show_inline_in_a_notebook(perceptron, data) -> None:
    """Jupyter shows an object's _repr_png_ without `%matplotlib inline` (IPython's own
    matplotlib formatter comes only with pyplot)."""
    x, y = data
    history = fitted_history(data, epochs=2)
    for figure in (plot.weights(perceptron), plot.confusion(perceptron, x, y),
                   plot.mistakes(perceptron, x, y), plot.history(history)):
        assert figure._repr_png_().startswith(PNG_SIGNATURE)
        from matplotlib.figure import Figure

        assert isinstance(figure, Figure)


@needs_matplotlib
def test_the_command_draws_one_picture_as_svg(perceptron, tmp_path, capsys) -> None:
    perceptron.save(tmp_path / "model.npz")
    assert plot_command(tmp_path / "model.npz", "--what", "weights", "--format", "svg",
                        "--out", tmp_path) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'weights.svg'}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "weights.svg"]


@needs_matplotlib
@pytest.mark.parametrize(("argv", "message"), [
    (["--out", "."], "give a MODEL.npz, --history FILE.json, or both"),
    (["--what", "weights", "--history", "h.json", "--out", "."], "--what draws a model"),
    (["model.npz", "--out", "model.npz/pictures"], "model.npz is a file, not a folder"),
    (["model.npz", "--out", "model.npz"], "exists and is not a folder"),
    (["model.npz", "--out", ""], "empty folder name"),
])
def test_the_command_refuses_what_it_cannot_do(perceptron, tmp_path, monkeypatch, argv,
                                               message) -> None:
    monkeypatch.chdir(tmp_path)
    perceptron.save(tmp_path / "model.npz")
    with pytest.raises(ValueError, match=message):
        plot_command(*argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
