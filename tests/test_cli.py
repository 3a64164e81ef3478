"""Tests for the ``mnistnet`` command line (mnistnet.cli, ``python -m mnistnet``).

Argument and file errors run in-process through ``main([...])``; training, the log format,
predict's output and Ctrl-C run the command as a real subprocess. Everything except the
tutorial check uses tiny synthetic IDX datasets written to tmp_path; the tutorial check (and
predict on real digits) needs $MNISTNET_DATA.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import struct
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import IO

import numpy as np
import pytest

import mnistnet as mn
from mnistnet.cli import main

TIMEOUT = 120  # seconds, for any one subprocess
LOG_LINE = re.compile(
    r"^\d+/\d+ - \d+s - \d+(us|ms|s)/step - accuracy: \d\.\d{4} - loss: \d+\.\d{4} - "
    r"val_accuracy: \d\.\d{4} - val_loss: \d+\.\d{4}$"
)
LOSS_LINE = re.compile(r"^loss: (mse|categorical_crossentropy) \(.+\)$")
FINAL_LINE = re.compile(r"^test accuracy: (\d\.\d{4}) \(loss (\d+\.\d{4})\)$")
EVALUATE_LINE = re.compile(r"^loss: (\d+\.\d{4}) - accuracy: (\d\.\d{4})$")
PREDICT_LINE = re.compile(r"^(.+)\[(\d+)\]: digit (\d) \(p=(\d\.\d{3})\)$")
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# --------------------------------------------------------------------------- helpers


def cli_env() -> dict[str, str]:
    """The test process's environment (PYTHONPATH included, unchanged). The kernels' thread
    count defaults to 1 unless set: results are bit-identical for any count, and one thread
    keeps these timings independent of how busy the (shared, 2-core) machine is."""
    env = dict(os.environ)
    env.setdefault("MNISTNET_NUM_THREADS", "1")
    return env


def run_cli(*args: str | Path, cwd: Path, timeout: float = TIMEOUT
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mnistnet", *map(str, args)], cwd=cwd,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_dataset(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random 28x28 uint8 images with random labels in the four-file MNIST layout."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))
    for stem, array in zip(STEMS, arrays, strict=True):
        (folder / stem).write_bytes(idx_bytes(array))
    return folder


def assert_one_line_error(stderr: str) -> str:
    """stderr is exactly one line "mnistnet: error: ..." (no traceback); returns it."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mnistnet: error: "), stderr
    return lines[0]


def check_main_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """main(argv) exits 2 with a one-line error and prints nothing on stdout."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert out == ""
    return assert_one_line_error(err)


def mnist_dir() -> Path:
    path = os.environ.get("MNISTNET_DATA")
    if not path:
        pytest.skip("set MNISTNET_DATA to a folder holding the four MNIST files")
    return Path(path)


def parse_train_output(stdout: str, epochs: int) -> tuple[list[str], float, float]:
    """Check the log (the loss line, then one 'Epoch i/n' line and one metrics line per
    epoch, as in a pipe) and return the metrics lines and the final test accuracy and loss."""
    lines = stdout.splitlines()
    assert LOSS_LINE.match(lines[0]), stdout
    lines = lines[1:]
    logs = []
    for epoch in range(1, epochs + 1):
        assert lines[2 * epoch - 2] == f"Epoch {epoch}/{epochs}", stdout
        assert LOG_LINE.match(lines[2 * epoch - 1]), lines[2 * epoch - 1]
        logs.append(lines[2 * epoch - 1])
    final = FINAL_LINE.match(lines[-1])
    assert final, stdout
    return logs, float(final.group(1)), float(final.group(2))


def metric(log_line: str, name: str) -> float:
    return float(re.search(rf"(?:^| - ){name}: (\d+\.\d+)", log_line).group(1))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 training and 50 test images of noise."""
    return write_dataset(tmp_path_factory.mktemp("tiny"), 200, 50)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 784-16-10 softmax model (predict does not care whether it learned)."""
    path = tmp_path_factory.mktemp("model") / "model.npz"
    mn.Model([mn.Dense(16, activation="relu"), mn.Dense(10, activation="softmax")],
             input_dim=784, loss="categorical_crossentropy", seed=3).save(path)
    return path


# --------------------------------------------------------------------------- arguments


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"mnistnet {mn.__version__}\n"


def test_version_as_module(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"mnistnet {mn.__version__}\n"


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "info", "bench", "export",
                                     "plot", "demo"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mnistnet {command}")
    assert len(out.splitlines()) > 3


def test_the_command_and_the_package_say_what_they_train(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    from importlib.metadata import metadata

    for text in (out, metadata("mnistnet")["Summary"], mn.__doc__):
        assert "dense and convolutional" in " ".join(text.split()), text
        assert "small dense neural networks" not in text


def train_option_help(option: str) -> str:
    from mnistnet.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    action = next(a for a in train._actions if option in a.option_strings)
    return " ".join(action.help.split())


@pytest.mark.parametrize("option", ["--preset", "--epochs", "--batch-size", "--optimizer"])
def test_the_train_help_names_every_preset(option: str) -> None:
    text = train_option_help(option)
    missing = [name for name in mn.RECIPES if not re.search(rf"\b{name}\b", text)]
    assert not missing, f"{option}'s help leaves out {missing}: {text}"


def test_the_epochs_help_gives_each_presets_epochs() -> None:
    text = train_option_help("--epochs")
    for name, recipe in mn.RECIPES.items():
        assert re.search(rf"\b{recipe['epochs']} for [^;]*\b{name}\b", text), (name, text)


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mnistnet {mn.__version__}\n")
    assert "simd path:" in out


BAD_ARGUMENTS = {
    "no command": [],
    "unknown command": ["fit"],
    "no architecture": ["train"],
    "unknown preset": ["train", "--preset", "resnet"],
    "preset and layers": ["train", "--preset", "perceptron", "--layers", "10:softmax"],
    "unknown activation": ["train", "--layers", "16:swish,10:softmax"],
    "layer without activation": ["train", "--layers", "16"],
    "layer without units": ["train", "--layers", ":relu"],
    "zero units": ["train", "--layers", "0:relu"],
    "units not a number": ["train", "--layers", "x:relu"],
    "unknown loss": ["train", "--layers", "10:softmax", "--loss", "hinge"],
    "loss with preset": ["train", "--preset", "perceptron", "--loss", "mse"],
    "zero epochs": ["train", "--preset", "perceptron", "--epochs", "0"],
    "epochs not a number": ["train", "--preset", "perceptron", "--epochs", "ten"],
    "zero batch": ["train", "--preset", "perceptron", "--batch-size", "0"],
    "negative lr": ["train", "--preset", "perceptron", "--lr", "-0.1"],
    "infinite lr": ["train", "--preset", "perceptron", "--lr", "inf"],
    "nan lr": ["train", "--preset", "perceptron", "--lr", "nan"],
    "negative seed": ["train", "--preset", "perceptron", "--seed", "-1"],
    "unknown backend": ["train", "--preset", "perceptron", "--backend", "gpu"],
    "unknown option": ["train", "--preset", "perceptron", "--frobnicate", "0.9"],
    "momentum with adam": ["train", "--preset", "convnet", "--momentum", "0.9"],
    "momentum of 1": ["train", "--preset", "perceptron", "--momentum", "1"],
    "negative momentum": ["train", "--preset", "perceptron", "--momentum", "-0.5"],
    "unknown optimizer": ["train", "--preset", "perceptron", "--optimizer", "lbfgs"],
    "conv without kernel size": ["train", "--layers", "conv:32,flatten,10:softmax"],
    "conv with zero filters": ["train", "--layers", "conv:0:3,flatten,10:softmax"],
    "conv with a bad kernel": ["train", "--layers", "conv:8:3y3,flatten,10:softmax"],
    "pool with an unknown option": ["train", "--layers", "pool:2:size=3,flatten,10:softmax"],
    "pool with a bad padding": ["train", "--layers", "pool:2:padding=full,flatten,10:softmax"],
    "dropout of 1": ["train", "--layers", "dropout:1,10:softmax"],
    "dropout not a number": ["train", "--layers", "dropout:half,10:softmax"],
    "flatten with a value": ["train", "--layers", "flatten:2,10:softmax"],
    "unknown layer": ["train", "--layers", "lstm:32,10:softmax"],
    "evaluate without model": ["evaluate"],
    "predict without files": ["predict", "model.npz"],
}


@pytest.mark.parametrize("argv", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    check_main_error(argv, capsys)


def test_unknown_activation_names_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    line = check_main_error(["train", "--layers", "16:swish,10:softmax"], capsys)
    assert "swish" in line and "relu" in line and "tanh" in line and "softmax" in line


def test_save_into_missing_folder_fails_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "no" / "such" / "folder" / "m.npz"
    line = check_main_error(["train", "--preset", "perceptron", "--save", str(target),
                             "--data", str(tmp_path / "absent")], capsys)
    assert "--save" in line and "does not exist" in line


def test_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = check_main_error(["train", "--preset", "perceptron", "--data",
                             str(tmp_path / "absent")], capsys)
    assert str(tmp_path / "absent") in line


def test_incomplete_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_dataset(tmp_path, 10, 10)
    (tmp_path / STEMS[3]).unlink()
    line = check_main_error(["train", "--preset", "perceptron", "--data", str(tmp_path)],
                            capsys)
    assert STEMS[3] in line


def test_corrupt_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_dataset(tmp_path, 10, 10)
    path = tmp_path / STEMS[0]
    path.write_bytes(path.read_bytes()[:-7])
    line = check_main_error(["train", "--preset", "perceptron", "--data", str(tmp_path)],
                            capsys)
    assert STEMS[0] in line


def test_library_value_error_is_one_line(tiny_data: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    line = check_main_error(["train", "--layers", "16:relu,10:sigmoid", "--loss",
                             "categorical_crossentropy", "--data", str(tiny_data)], capsys)
    assert "softmax" in line


def test_output_layer_too_small_for_the_labels(tiny_data: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    check_main_error(["train", "--layers", "5:softmax", "--loss", "categorical_crossentropy",
                      "--data", str(tiny_data), "--quiet"], capsys)


# --------------------------------------------------------------------------- train, evaluate


def test_train_synthetic_log_history_and_evaluate(tiny_data: Path, tmp_path: Path) -> None:
    result = run_cli("train", "--layers", "16:relu,10:softmax", "--loss",
                     "categorical_crossentropy", "--epochs", "2", "--data", tiny_data,
                     "--save", "m.npz", "--history", "h.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    logs, accuracy, loss = parse_train_output(result.stdout, epochs=2)
    assert all(line.startswith("7/7 - ") for line in logs)  # ceil(200 / 32) steps
    assert f"{metric(logs[-1], 'val_accuracy'):.4f}" == f"{accuracy:.4f}"
    assert f"{metric(logs[-1], 'val_loss'):.4f}" == f"{loss:.4f}"

    record = json.loads((tmp_path / "h.json").read_text())
    assert record["epoch"] == [0, 1]
    assert sorted(record["history"]) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert all(len(values) == 2 for values in record["history"].values())
    assert f"{record['history']['val_accuracy'][-1]:.4f}" == f"{accuracy:.4f}"
    assert record["layers"] == [{"class": "Dense", "units": 16, "activation": "relu"},
                                {"class": "Dense", "units": 10, "activation": "softmax"}]
    assert record["optimizer"] == {"class": "SGD", "learning_rate": 0.01}
    assert record["preset"] is None
    assert record["loss"] == "categorical_crossentropy"
    assert (record["seed"], record["backend"], record["epochs"]) == (0, "fast", 2)
    assert (record["batch_size"], record["lr"]) == (32, 0.01)
    assert record["mnistnet_version"] == mn.__version__
    assert record["diverged"] is False
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    evaluated = run_cli("evaluate", "m.npz", "--data", tiny_data, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    match = EVALUATE_LINE.match(evaluated.stdout.strip())
    assert match, evaluated.stdout
    assert (float(match.group(1)), float(match.group(2))) == (loss, accuracy)


@pytest.mark.parametrize(("options", "loss", "why"), [
    (["--layers", "16:relu,10:softmax"], "categorical_crossentropy",
     "chosen for the softmax output; --loss to change it"),
    (["--layers", "16:relu,10:sigmoid"], "mse",
     "chosen for the sigmoid output; --loss to change it"),
    (["--layers", "16:relu,10:softmax", "--loss", "mse"], "mse", "--loss"),
    (["--preset", "perceptron"], "mse", "the perceptron preset's"),
    (["--preset", "cross-entropy"], "categorical_crossentropy", "the cross-entropy preset's"),
], ids=["softmax", "sigmoid", "explicit", "perceptron", "cross-entropy"])
def test_train_says_which_loss_follows_the_output(options: list[str], loss: str, why: str,
                                                  tiny_data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Without --loss the loss follows the output layer, as the presets pair them; the log's
    first line says which loss trains and why."""
    history = tmp_path / "h.json"
    code = main(["train", *options, "--epochs", "1", "--data", str(tiny_data),
                 "--history", str(history)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0] == f"loss: {loss} ({why})"
    assert json.loads(history.read_text())["loss"] == loss


def test_train_without_save_says_how_to_keep_the_model(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--layers", "8:relu,10:softmax", "--epochs", "1",
                 "--data", str(tiny_data)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "model not saved (add --save model.npz to keep it)" in out.splitlines()[-2]
    assert FINAL_LINE.match(out.splitlines()[-1])


def test_train_quiet_prints_only_the_result(tiny_data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--layers", "8:relu,10:sigmoid", "--epochs", "1", "--quiet",
                 "--backend", "reference", "--data", str(tiny_data),
                 "--save", str(tmp_path / "q.npz")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert FINAL_LINE.match(out.strip()), out
    assert (tmp_path / "q.npz").is_file()


def test_diverging_training_exits_3(tiny_data: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--layers", "16:relu,10:softmax", "--loss",
                 "categorical_crossentropy", "--lr", "1e30", "--epochs", "3", "--quiet",
                 "--data", str(tiny_data), "--save", str(tmp_path / "m.npz"),
                 "--history", str(tmp_path / "h.json")])
    out, err = capsys.readouterr()
    assert code == 3
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[-1].startswith("mnistnet: error: training diverged"), err
    assert any(line.startswith("mnistnet: warning: ") and "NaN or Inf" in line
               for line in lines[:-1]), err
    assert out == ""
    assert not (tmp_path / "m.npz").exists()
    assert json.loads((tmp_path / "h.json").read_text())["diverged"] is True


@pytest.mark.slow
def test_tutorial_cross_entropy(tmp_path: Path) -> None:
    """The tutorial's third network reaches 97% test accuracy in 20 epochs."""
    data = mnist_dir()
    result = run_cli("train", "--preset", "cross-entropy", "--epochs", "20", "--data", data,
                     "--save", "m.npz", "--history", "h.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    logs, accuracy, _ = parse_train_output(result.stdout, epochs=20)
    assert all(line.startswith("1875/1875 - ") for line in logs)
    val_accuracy = json.loads((tmp_path / "h.json").read_text())["history"]["val_accuracy"]
    assert len(val_accuracy) == 20
    assert val_accuracy[-1] >= 0.97
    assert f"{metric(logs[-1], 'val_accuracy'):.4f}" == f"{val_accuracy[-1]:.4f}"

    evaluated = run_cli("evaluate", "m.npz", "--data", data, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    match = EVALUATE_LINE.match(evaluated.stdout.strip())
    assert match, evaluated.stdout
    assert match.group(2) == f"{val_accuracy[-1]:.4f}" == f"{accuracy:.4f}"


# --------------------------------------------------------------------------- Ctrl-C


def _default_sigint() -> None:
    """In the child: a shell running the tests in the background may have SIGINT ignored,
    and Python only turns SIGINT into KeyboardInterrupt when it is not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class LineReader:
    """Reads a child's stdout in a thread, so that waiting for a line can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float) -> list[str]:
        """Lines up to the first one starting with ``prefix``; fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if line.startswith(prefix):
                return seen
        raise AssertionError(f"no line starting with {prefix!r} within {timeout} s: {seen}")


def interrupt_training(tmp_path: Path, options: list[str], line: str,
                       timeout: float) -> tuple[int, str]:
    """Train a 784-256-10 net for 500 epochs on 20,000 random images in tmp_path with
    `options`, send SIGINT once stdout shows `line`; (exit code, stderr)."""
    data = write_dataset(tmp_path / "data", 20_000, 100)
    command = [sys.executable, "-m", "mnistnet", "train", "--layers", "256:relu,10:softmax",
               "--loss", "categorical_crossentropy", "--epochs", "500", "--data", str(data),
               *options]
    with subprocess.Popen(command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=_default_sigint) as process:
        reader = LineReader(process.stdout)
        try:
            reader.wait_for(line, timeout=timeout)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
            reader.thread.join(timeout=30)
        return process.returncode, process.stderr.read()  # a few lines: the pipe holds them


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_saves_the_model_and_exits_130(tmp_path: Path) -> None:
    returncode, err = interrupt_training(tmp_path, ["--save", "m.npz"], "Epoch 2/", 60)
    assert returncode == 130, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mnistnet: interrupted during epoch "), err
    assert "m.npz" in lines[0]
    model = mn.Model.load(tmp_path / "m.npz")
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert [w.shape for w in model.get_weights()] == [(784, 256), (256,), (256, 10), (10,)]


# --------------------------------------------------------------------------- predict


def pgm_bytes(image: np.ndarray, comment: bytes = b"# written by test_cli\n") -> bytes:
    height, width = image.shape
    return b"P5\n" + comment + f"{width} {height}\n255\n".encode() + image.tobytes()


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Five 28x28 uint8 test images: real MNIST digits if available, else noise."""
    path = os.environ.get("MNISTNET_DATA")
    if path:
        (_, _), (x_test, _) = mn.load_mnist(path, normalize=False)
        return x_test[:5].reshape(5, 28, 28)
    return np.random.default_rng(7).integers(0, 256, (5, 28, 28), dtype=np.uint8)


def test_predict_formats(model_file: Path, digits: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", digits[0])                                     # (28, 28)
    np.save(tmp_path / "rows.npy", digits.reshape(5, 784))                      # (n, 784)
    np.save(tmp_path / "float.npy", digits.astype(np.float32) / 255)            # (n, 28, 28)
    (tmp_path / "two.pgm").write_bytes(pgm_bytes(digits[1]))
    (tmp_path / "imgs.idx").write_bytes(idx_bytes(digits))                      # (n, 28, 28)
    (tmp_path / "one.idx").write_bytes(idx_bytes(digits[3]))                    # (28, 28)
    files = {"one.npy": digits[:1], "rows.npy": digits, "float.npy": digits,
             "two.pgm": digits[1:2], "imgs.idx": digits, "one.idx": digits[3:4]}
    result = run_cli("predict", model_file, *files, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""

    model = mn.Model.load(model_file)
    expected = []
    for name, images in files.items():
        outputs = model.predict(images.reshape(-1, 784).astype(np.float32) / 255)
        expected += [(name, i, int(np.argmax(row)), float(np.max(row)))
                     for i, row in enumerate(outputs)]
    lines = result.stdout.splitlines()
    assert len(lines) == len(expected)
    for line, (name, i, digit, p) in zip(lines, expected, strict=True):
        match = PREDICT_LINE.match(line)
        assert match, line
        assert (match.group(1), int(match.group(2)), int(match.group(3))) == (name, i, digit)
        assert abs(float(match.group(4)) - p) <= 5e-4 + 1e-6


def _write(path: Path, content: bytes | np.ndarray) -> Path:
    if isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=True)
    else:
        path.write_bytes(content)
    return path


IMAGE = np.arange(784, dtype=np.uint8).reshape(28, 28)
BAD_IMAGES = {
    "plain.pgm": pgm_bytes(IMAGE).replace(b"P5", b"P2", 1),
    "color.pgm": b"P6\n28 28\n255\n" + bytes(3 * 784),
    "truncated.pgm": pgm_bytes(IMAGE)[:-100],
    "trailing.pgm": pgm_bytes(IMAGE) + b"\0",
    "small.pgm": pgm_bytes(IMAGE[:27, :27]),
    "deep.pgm": b"P5\n28 28\n65535\n" + bytes(2 * 784),
    "no_size.pgm": b"P5\n# only a comment\n",
    "bad_size.pgm": b"P5\n28 x8\n255\n" + bytes(784),
    "too_bright.pgm": b"P5\n28 28\n100\n" + IMAGE.tobytes(),
    "shape.npy": np.zeros((3, 27, 27), dtype=np.uint8),
    "flat.npy": np.zeros(100, dtype=np.uint8),
    "object.npy": np.array([{"pixels": 1}], dtype=object),
    "int64.npy": np.zeros((28, 28), dtype=np.int64),
    "nan.npy": np.full((28, 28), np.nan, dtype=np.float32),
    "empty.npy": np.zeros((0, 28, 28), dtype=np.uint8),
    "cut.npy": b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (28,",
    "labels.idx": idx_bytes(np.arange(10, dtype=np.uint8)),
    "truncated.idx": idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))[:-1],
    "empty.bin": b"",
    "text.txt": b"hello, world\n",
}


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_predict_bad_image_file(name: str, model_file: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / name, BAD_IMAGES[name])
    line = check_main_error(["predict", str(model_file), str(path)], capsys)
    assert name in line


def test_predict_missing_image_file(model_file: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    line = check_main_error(["predict", str(model_file), str(tmp_path / "absent.npy")], capsys)
    assert "absent.npy" in line


def test_predict_prints_nothing_when_a_later_file_is_bad(
        model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path / "good.npy", IMAGE)
    bad = _write(tmp_path / "bad.pgm", BAD_IMAGES["plain.pgm"])
    check_main_error(["predict", str(model_file), str(good), str(bad)], capsys)


def test_predict_pgm_header_variants(model_file: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Comments and any whitespace between the header fields; maxval scales the pixels."""
    half = (IMAGE // 2).astype(np.uint8)
    _write(tmp_path / "a.pgm", b"P5 28\t28\r\n#c1\n#c2\n127\n" + half.tobytes())
    _write(tmp_path / "b.pgm", b"P5#x\n28 28 255 " + IMAGE.tobytes())
    assert main(["predict", str(model_file), str(tmp_path / "a.pgm"),
                 str(tmp_path / "b.pgm")]) == 0
    out = capsys.readouterr().out.splitlines()
    model = mn.Model.load(model_file)
    a = model.predict(half.reshape(1, 784).astype(np.float32) / 127)[0]
    b = model.predict(IMAGE.reshape(1, 784).astype(np.float32) / 255)[0]
    assert out == [f"{tmp_path / 'a.pgm'}[0]: digit {np.argmax(a)} (p={np.max(a):.3f})",
                   f"{tmp_path / 'b.pgm'}[0]: digit {np.argmax(b)} (p={np.max(b):.3f})"]


# --------------------------------------------------------------------------- model files


def _bad_models(folder: Path, model_file: Path) -> dict[str, Path]:
    good = model_file.read_bytes()
    files = {
        "garbage.npz": b"this is not a model\n" * 20,
        "truncated.npz": good[: len(good) // 2],
        "empty.npz": b"",
    }
    paths = {name: _write(folder / name, content) for name, content in files.items()}
    np.savez(folder / "other.npz", weights=np.zeros(3))
    paths["other.npz"] = folder / "other.npz"
    paths["missing.npz"] = folder / "missing.npz"
    paths["folder.npz"] = folder / "folder.npz"
    paths["folder.npz"].mkdir()
    return paths


BAD_MODELS = ["garbage.npz", "truncated.npz", "empty.npz", "other.npz", "missing.npz",
              "folder.npz"]


@pytest.mark.parametrize("name", BAD_MODELS)
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_bad_model_file(command: str, name: str, model_file: Path, tiny_data: Path,
                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad_models(tmp_path, model_file)[name]
    image = _write(tmp_path / "image.npy", IMAGE)
    extra = ["--data", str(tiny_data)] if command == "evaluate" else [str(image)]
    line = check_main_error([command, str(path), *extra], capsys)
    assert name in line


def test_bad_model_file_as_subprocess(tmp_path: Path) -> None:
    _write(tmp_path / "garbage.npz", b"\0" * 100)
    for args in (("evaluate", "missing.npz"), ("predict", "garbage.npz", "x.npy")):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stdout == ""
        assert args[1] in assert_one_line_error(result.stderr)


def test_evaluate_model_that_does_not_fit_the_data(tmp_path: Path, tiny_data: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "narrow.npz"
    mn.Model([mn.Dense(10, activation="softmax")], input_dim=100,
             loss="categorical_crossentropy").save(path)
    check_main_error(["evaluate", str(path), "--data", str(tiny_data)], capsys)


# --------------------------------------------------------------------------- interruptions


def test_interrupt_without_save(tiny_data: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted_fit(self: mn.Model, *args: object, **kwargs: object) -> mn.History:
        raise KeyboardInterrupt

    monkeypatch.setattr(mn.Model, "fit", interrupted_fit)
    code = main(["train", "--layers", "10:sigmoid", "--data", str(tiny_data)])
    err = capsys.readouterr().err
    assert code == 130
    assert err.startswith("mnistnet: interrupted during epoch 1/30 (0 completed); ")
    assert "nothing saved" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
@pytest.mark.parametrize("n_images", [3, 2000], ids=["fails-at-exit-flush", "fails-mid-run"])
def test_closed_stdout_is_not_an_error_message(n_images: int, model_file: Path,
                                               tmp_path: Path) -> None:
    """`mnistnet predict ... | head -0`: exit 141, no traceback, no 'Exception ignored'."""
    _write(tmp_path / "many.npy", np.zeros((n_images, 28, 28), dtype=np.uint8))
    env = cli_env()
    env.pop("PYTHONUNBUFFERED", None)  # block-buffered stdout, as in a usual pipe
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "mnistnet", "predict", str(model_file),
                                 "many.npy"], cwd=tmp_path, env=env, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=TIMEOUT,
                                check=False)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141


@pytest.mark.parametrize("how", [["-c", "import mnistnet"], ["-m", "mnistnet", "--version"]])
def test_a_source_folder_without_extensions_says_what_to_do(tmp_path: Path, how) -> None:
    """Python started in a checkout (before building in place): its mnistnet/ folder comes
    first on sys.path. The error says so plainly, not "circular import". (An editable
    install's import hook comes before the current folder: nothing is shadowed then.)"""
    source = Path(mn.__file__).parent
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    if source.resolve().parent not in site:
        pytest.skip(f"mnistnet is imported from {source} (an editable or in-place build)")
    copy = tmp_path / "mnistnet"
    copy.mkdir()
    for path in source.glob("*.py"):
        (copy / path.name).write_bytes(path.read_bytes())
    done = subprocess.run([sys.executable, *how], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert "circular" not in message
    assert str(copy) in message
    assert ("shadows the installed mnistnet" in message
            or "compiled extensions are missing" in message), message
    assert "pip install" in message
