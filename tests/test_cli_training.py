"""The command line's training options of issue 11: --resume (bit-identical to training
straight through), --checkpoint (and Ctrl-C leaving its last file intact), --early-stopping,
--validation-split, --schedule, --l2, the new layers of --layers, and their errors.

Everything trains on tiny synthetic IDX datasets (test_cli.write_dataset), as a subprocess.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import (
    check_main_error,
    interrupt_training,
    run_cli,
    write_dataset,
)

import mnistnet as mn

# Every piece of state a resume must carry: dropout and translation masks, batch statistics,
# an L2 penalty, Adam's moments and a warmup-then-cosine schedule over the planned epochs.
LAYERS = "translate:0.1,conv:4:3,bn,act:relu,pool:2,flatten,dropout:0.2,16:relu,10:softmax"
TRAIN = ["train", "--layers", LAYERS, "--loss", "categorical_crossentropy", "--optimizer",
         "adam", "--lr", "0.01", "--schedule", "cosine:1", "--l2", "0.0001", "--batch-size",
         "16", "--validation-split", "0.2", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("train-data"), 240, 40)


def test_resume_is_bit_identical_to_training_straight_through(data: Path, tmp_path: Path):
    straight = run_cli(*TRAIN, "--epochs", "4", "--data", data, "--checkpoint",
                       "ckpt-{epoch}.npz", "--save", "straight.npz", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.npz")) == [
        f"ckpt-{e}.npz" for e in range(1, 5)]
    # No --validation-split: the file's 0.2 is held out again.
    resumed = run_cli("train", "--resume", "ckpt-2.npz", "--epochs", "2", "--data", data,
                      "--save", "resumed.npz", "--history", "h.json", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = mn.Model.load(tmp_path / "straight.npz"), mn.Model.load(tmp_path / "resumed.npz")
    np.testing.assert_array_equal(b.params, a.params)
    np.testing.assert_array_equal(b.optimizer_state, a.optimizer_state)
    assert (b.epochs_trained, b.optimizer.iterations) == (a.epochs_trained,
                                                          a.optimizer.iterations) == (4, 48)
    assert b.fit_batch_size == 16  # taken from the file: no --batch-size given
    assert b.fit_validation_split == 0.2
    record = json.loads((tmp_path / "h.json").read_text())
    # The model's epochs 3 and 4, numbered from 0 as Keras' History numbers them when fit
    # starts at initial_epoch=2.
    assert record["resumed_from"] == "ckpt-2.npz" and record["epoch"] == [2, 3]
    assert record["learning_rate"]["class"] == "CosineDecay"
    half = mn.Model.load(tmp_path / "ckpt-2.npz")
    assert not np.array_equal(half.params, a.params)


def test_a_presets_schedule_stays_with_another_optimizer(data: Path, tmp_path: Path):
    result = run_cli("train", "--preset", "convnet-plus", "--optimizer", "adamw", "--epochs",
                     "1", "--data", data, "--history", "h.json", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "h.json").read_text())
    assert record["optimizer"]["class"] == "AdamW"
    # AdamW's default rate (Keras': 0.001) as the one-cycle's peak, over this run's 2 steps.
    assert record["learning_rate"]["class"] == "OneCycle"
    assert record["learning_rate"]["max_learning_rate"] == 0.001
    assert record["learning_rate"]["total_steps"] == 2


def test_resuming_past_the_schedules_end_warns(data: Path, tmp_path: Path):
    first = run_cli(*TRAIN, "--epochs", "2", "--data", data, "--save", "m.npz", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "warning" not in first.stderr
    resumed = run_cli("train", "--resume", "m.npz", "--epochs", "1", "--data", data,
                      "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    # 2 epochs of 12 steps: a 1-epoch warmup, then 12 steps of cosine decay down to 0.
    assert ("warning: the model file's CosineDecay schedule ended at step 24 (this model has "
            "taken 24): the new epochs train at its final rate, 0") in resumed.stderr


def test_early_stopping_and_the_new_optimizers_from_the_command_line(data: Path,
                                                                     tmp_path: Path):
    result = run_cli("train", "--layers", "32:relu,bn,10:softmax", "--loss",
                     "categorical_crossentropy", "--optimizer", "rmsprop", "--momentum", "0.5",
                     "--lr", "0.05", "--early-stopping", "0", "--epochs", "30", "--data", data,
                     "--history", "h.json", "--save", "m.npz", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # stopping early is not divergence
    record = json.loads((tmp_path / "h.json").read_text())
    assert 2 <= len(record["epoch"]) < 30  # noise: the validation loss soon stops improving
    assert record["optimizer"]["class"] == "RMSprop" and record["optimizer"]["momentum"] == 0.5
    val = record["history"]["val_loss"]
    model = mn.Model.load(tmp_path / "m.npz")
    assert model.epochs_trained == len(val)
    # The best epoch's weights were kept: the saved model scores the best val_loss.
    (_, _), (x_test, y_test) = mn.load_mnist(data)
    assert model.evaluate(x_test, y_test)["loss"] == pytest.approx(min(val), rel=1e-6)
    result = run_cli("train", "--layers", "10:softmax", "--loss", "categorical_crossentropy",
                     "--optimizer", "adamw", "--schedule", "piecewise:1=0.0005", "--epochs",
                     "2", "--data", data, "--history", "w.json", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "w.json").read_text())
    assert record["optimizer"]["class"] == "AdamW"  # 240 images, batch 32: 8 steps an epoch
    assert record["learning_rate"] == {"class": "PiecewiseConstantDecay", "boundaries": [7],
                                       "values": [0.001, 0.0005]}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_leaves_the_last_checkpoint_intact(tmp_path: Path) -> None:
    returncode, err = interrupt_training(tmp_path, ["--checkpoint", "ckpt.npz"], "Epoch 3/",
                                         120)
    assert returncode == 130, err
    assert "ckpt.npz holds the last completed epoch" in err
    model = mn.Model.load(tmp_path / "ckpt.npz")
    assert model.epochs_trained in (2, 3)  # Ctrl-C came during epoch 3 (or just after it)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz", "data"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--resume", "m.npz", "--epochs", "2", "--lr", "0.1"],
     "--lr: --resume continues with the model file's own settings"),
    (["--resume", "m.npz"], "--resume needs --epochs"),
    (["--resume", "m.npz", "--epochs", "2", "--validation-split", "0.1"],
     "--validation-split: --resume continues with the model file's own settings"),
    (["--resume", "m.npz", "--preset", "convnet"], "not allowed with argument"),
    (["--preset", "convnet", "--schedule", "linear"], "expected cosine[:WARMUP_EPOCHS]"),
    (["--preset", "convnet", "--schedule", "cosine:5", "--epochs", "5"],
     "the warmup (5 epochs) must be shorter than the training"),
    (["--preset", "convnet", "--schedule", "piecewise:3=0.1,2=0.2"], "strictly increasing"),
    (["--preset", "convnet", "--l2", "-0.1"], "must be a finite number >= 0"),
    (["--preset", "convnet", "--validation-split", "1"], r"must lie in (0, 1)"),
    (["--preset", "convnet", "--early-stopping", "-1"],
     "--early-stopping: must be an integer >= 0, got '-1'"),
    (["--preset", "convnet", "--momentum", "1.0"], r"must lie in [0, 1)"),
    (["--preset", "convnet", "--optimizer", "adam", "--momentum", "0.9"],
     "--momentum applies to --optimizer sgd or rmsprop only"),
    (["--layers", "translate:2,flatten,10:softmax"],
     "translate takes a fraction in [0, 1], got '2'"),
    (["--preset", "convnet", "--checkpoint", "missing/ckpt.npz"], "does not exist"),
])
def test_training_option_errors(argv, message, data: Path, tmp_path: Path, capsys,
                                monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    mn.Model([mn.Dense(10)], input_dim=784).save(tmp_path / "m.npz")
    line = check_main_error(["train", *argv, "--data", str(data)], capsys)
    assert message in line, line
