"""Reliability, second round (issue 19): no crash, no traceback, no unbounded wait, whatever
the input. One section per class of the issue, then its four gaps. (Model files that are
devices, FIFOs or huge: test_model_files; thread counts: test_threads.)
"""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from test_cli import check_main_error, run_cli, write_dataset

import mnistnet as mn
from mnistnet import plan as plan_module

MIB = 1 << 20


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 training and 20 test images of noise, in MNIST's four files."""
    return write_dataset(tmp_path_factory.mktemp("tiny"), 100, 20)


def _peak_while(call) -> tuple[BaseException | None, int]:
    """(what call() raised, the peak of Python's allocations meanwhile)."""
    tracemalloc.start()
    try:
        call()
        raised = None
    except Exception as exc:
        raised = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return raised, peak


# =========================================================================== 6. absurd sizes

# case -> (the layers, the one refused, its repr's start, the unit of the memory it needs)
ABSURD = {
    "conv 2**62 filters": (lambda: [mn.Conv2D(2**62, 3), mn.Flatten(), mn.Dense(10)], 0,
                           "Conv2D(filters=4611686018427387904", "ZiB"),
    "conv 10**9 filters": (lambda: [mn.Conv2D(10**9, 3), mn.Flatten(), mn.Dense(10)], 0,
                           "Conv2D(filters=1000000000", "TiB"),
    "conv kernel 99999999": (lambda: [mn.Conv2D(2, 99999999, padding="same"), mn.Flatten(),
                                      mn.Dense(10)], 0, "Conv2D(filters=2, kernel_size="
                                                        "[99999999, 99999999]", "PiB"),
    "dense 10**20 units": (lambda: [mn.Flatten(), mn.Dense(10**20, activation="relu"),
                                    mn.Dense(10)], 1, "Dense(100000000000000000000", "ZiB"),
    "dense after a small one": (lambda: [mn.Flatten(), mn.Dense(10), mn.Dense(10**15),
                                         mn.Dense(10)], 2, "Dense(1000000000000000", "PiB"),
}


@pytest.mark.parametrize("case", ABSURD)
def test_absurd_sizes_are_one_error_naming_the_layer_before_any_allocation(case):
    """numpy's MemoryError ("Unable to allocate 24.6 TiB") or OverflowError ("Python int too
    large to convert to C long") used to come out of Model(...); now the plan's sizes are
    checked first, as exact integers."""
    layers, index, names, unit = ABSURD[case]
    raised, peak = _peak_while(lambda: mn.Model(layers(), input_shape=(28, 28, 1)))
    assert isinstance(raised, ValueError), repr(raised)
    message = str(raised)
    assert message.startswith(f"layers[{index}] {names}"), message
    assert " is too large: " in message
    assert " weights and " in message and " outputs per sample need " in message
    assert f" {unit} of memory to train, and this machine has " in message
    assert peak < MIB


def test_a_model_too_large_as_a_whole_names_its_largest_layer(monkeypatch):
    monkeypatch.setattr(plan_module, "physical_memory", lambda: 2 * MIB)
    layers = [mn.Dense(200, activation="relu"), mn.Dense(200, activation="relu"), mn.Dense(10)]
    with pytest.raises(ValueError) as raised:
        mn.Model(layers, input_dim=784)
    assert str(raised.value).startswith("the model is too large: training it needs ")
    assert ("and this machine has 2.0 MiB; its largest layer is layers[0] Dense(200, "
            "activation='relu'), with 157,000 weights and 200 outputs per sample"
            in str(raised.value))
    monkeypatch.undo()
    mn.Model(layers, input_dim=784)  # fits this machine


@pytest.mark.parametrize("layers", ["conv:1000000000:3,flatten,10:softmax",
                                    "conv:2:99999999:padding=same,flatten,10:softmax",
                                    "99999999999999999999:relu,10:softmax"])
def test_absurd_cli_layers_are_one_line(layers, tiny_data, capsys):
    line = check_main_error(["train", "--layers", layers, "--epochs", "1", "--data",
                             str(tiny_data), "--quiet"], capsys)
    assert " is too large: " in line and " of memory to train" in line


@pytest.mark.parametrize("error, shown", [
    (MemoryError(), "out of memory (MemoryError); try smaller sizes"),
    (MemoryError("Unable to allocate 24.6 TiB for an array"),
     "out of memory (Unable to allocate 24.6 TiB for an array); try smaller sizes"),
    (OverflowError("Python int too large to convert to C long"),
     "Python int too large to convert to C long")])
def test_memory_and_overflow_errors_are_one_line_in_the_cli(error, shown, tiny_data, capsys,
                                                            monkeypatch):
    """Whatever size gets past the checks, the CLI reports it without a traceback."""
    def failing_fit(*args, **kwargs):
        raise error

    monkeypatch.setattr(mn.Model, "fit", failing_fit)
    line = check_main_error(["train", "--layers", "10:softmax", "--epochs", "1", "--data",
                             str(tiny_data), "--quiet"], capsys)
    assert line == f"mnistnet: error: {shown}"


def test_a_seed_beyond_64_bits_is_refused_by_name(tiny_data, capsys):
    with pytest.raises(ValueError, match=r"^seed must be below 2\*\*64, got 18446744073709551616$"):
        mn.Model([mn.Dense(10)], input_dim=784, seed=2**64)
    line = check_main_error(["train", "--layers", "10:softmax", "--epochs", "1", "--seed",
                             str(2**64), "--data", str(tiny_data), "--quiet"], capsys)
    assert line.endswith("seed must be below 2**64, got 18446744073709551616")


# =========================================================================== 3. float32 numbers

ROWS = np.random.default_rng(19).random((64, 6), dtype=np.float32)
LABELS = np.arange(64) % 3


def _small(optimizer=None, backend: str = "fast", **kwargs) -> mn.Model:
    return mn.Model([mn.Dense(3, activation="softmax", **kwargs)], input_dim=6,
                    loss="categorical_crossentropy", optimizer=optimizer, backend=backend)


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_a_schedule_beyond_float32_is_refused_before_the_epoch_that_would_read_it(backend):
    """ExponentialDecay(0.01, 1, 1e10) gives 1e48 at step 5: finite in float64, where it
    was checked, Inf once cast; the epoch trained at an infinite rate."""
    model = _small(mn.SGD(mn.schedules.ExponentialDecay(0.01, 1, 1e10)), backend)
    before = model.params.copy()
    with pytest.raises(ValueError, match=r"^ExponentialDecay\(.*\) gives the learning rate "
                                         r"1e\+48 at step 5; a rate must be a finite number "
                                         r">= 0, at most 3.4e\+38 \(float32"):
        model.fit(ROWS, LABELS, epochs=2, batch_size=8, verbose=0)
    np.testing.assert_array_equal(model.params, before)
    assert model.epochs_trained == 0 and model.optimizer.iterations == 0


def test_schedule_rates_are_checked_as_float32_wherever_they_are_read():
    schedule = mn.schedules.ExponentialDecay(1e-30, 8, 1e10)
    assert np.isfinite(schedule.rates(0, 48)).all()
    with pytest.raises(ValueError, match=r"gives the learning rate [\d.e+]+ at step 55;"):
        schedule.rates(48, 8)
    with pytest.raises(ValueError, match=r"at step 55;"):
        mn.SGD(schedule).rates(50, 10)
    with pytest.raises(ValueError, match=r"at step 55;"):
        schedule(55)


@pytest.mark.parametrize("make, message", [
    (lambda: mn.schedules.PiecewiseConstantDecay([10], [1e39, 0.001]),
     r"^values must be at most 3.4e\+38 \(float32, which the kernels compute in\), got 1e\+39$"),
    (lambda: mn.schedules.ExponentialDecay(1e39, 10, 0.5), r"^initial_learning_rate must be "
                                                           r"at most 3.4e\+38"),
    (lambda: mn.schedules.CosineDecay(0.0, 10, warmup_target=1e39, warmup_steps=5),
     r"^warmup_target must be at most 3.4e\+38"),
    (lambda: mn.schedules.OneCycle(1e39, 100), r"^max_learning_rate must be at most 3.4e\+38"),
    (lambda: mn.AdamW(weight_decay=1e39), r"^weight_decay must lie in \[0, 3.4e\+38\] "
                                          r"\(float32\), got 1e\+39$"),
    (lambda: mn.Adam(epsilon=1e39), r"^epsilon must lie in \[1.18e-38, 3.4e\+38\] \(float32\)"),
    (lambda: mn.RMSprop(epsilon=1e-50), r"^epsilon must lie in \[1.18e-38, 3.4e\+38\]"),
    (lambda: mn.regularizers.L2(1e39), r"^l2 must be at most 1.7e\+38"),
], ids=["piecewise values", "exponential start", "cosine warmup", "one-cycle peak",
        "adamw weight decay", "adam epsilon", "rmsprop epsilon", "l2"])
def test_numbers_finite_in_float64_but_not_in_float32_are_refused_up_front(make, message):
    """SGD(1e39) was refused while these were taken and cast to Inf (or 0) in the kernels."""
    with pytest.raises(ValueError, match=message):
        make()


def test_a_learning_rate_set_on_the_optimizer_is_checked_as_the_constructor_checks_it():
    model = _small(mn.SGD(0.1))
    for value in (1e39, 0.0, -1.0, 1e-50):
        with pytest.raises(ValueError, match=r"^learning_rate must "):
            model.optimizer.learning_rate = value
    assert model.optimizer.learning_rate == 0.1
    model.optimizer.learning_rate = 0.5
    np.testing.assert_array_equal(model.optimizer.rates(0, 2), np.float32([0.5, 0.5]))


# =========================================================================== 4. ReduceLROnPlateau

def test_reduce_lr_on_plateau_with_min_lr_0_carries_on_as_keras_does(tmp_path):
    """After about 37 reductions by 0.1 the rate fell below float32's smallest normal number
    and fit stopped with 'learning_rate must lie in [1.18e-38, ...]'. Keras holds the rate in
    float32 and goes on: through the subnormal numbers to 0, where it stays."""
    model = _small(mn.SGD(0.01))
    # Only the first epoch improves (min_delta is huge): every later one reduces the rate.
    reducer = mn.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.1, patience=0,
                                             min_delta=100.0)
    model.fit(ROWS, LABELS, epochs=50, batch_size=64, verbose=0, callbacks=[reducer])
    assert model.epochs_trained == 50 and len(model.history.epoch) == 50
    logged = model.history.history["learning_rate"]
    expected, rate = [0.01, 0.01], 0.01  # Keras' rule, by hand: float32 * factor, as float32
    while len(expected) < 50:
        rate = float(np.float32(max(float(np.float32(rate)) * 0.1, 0.0)))
        expected.append(rate)
    assert logged == expected
    tiny = float(np.finfo(np.float32).tiny)
    assert any(0 < r < tiny for r in logged) and logged[-1] == 0.0
    assert model.optimizer.learning_rate == 0.0
    # At rate 0 nothing moves, and the model saves and loads with its rate.
    before = model.params.copy()
    model.fit(ROWS, LABELS, epochs=1, batch_size=64, verbose=0)
    np.testing.assert_array_equal(model.params, before)
    model.save(tmp_path / "m.npz")
    assert mn.Model.load(tmp_path / "m.npz").optimizer.learning_rate == 0.0


# =========================================================================== 5. file names

BAD_NAMES = {
    "attribute": ("m-{epoch.bogus}.npz", "has the field {epoch.bogus}; a field is {epoch} or"),
    "index": ("m-{epoch[0]}.npz", "has the field {epoch[0]}; a field is"),
    "positional": ("m-{}.npz", "has the field {}; a field is"),
    "numbered": ("m-{0}.npz", "has the field {0}; a field is"),
    "conversion": ("m-{epoch!x}.npz", "has the field {epoch!x}; a field is"),
    "nested spec": ("m-{epoch:{width}}.npz", "has the field {epoch:{width}}; a field is"),
    "open brace": ("m-{epoch.npz", "is not a valid format string (expected '}' before end of "
                                   "string); write a literal brace twice: {{ or }}"),
    "lone close": ("m-}.npz", "is not a valid format string (Single '}' encountered"),
}


@pytest.mark.parametrize("case", BAD_NAMES)
def test_a_checkpoint_name_with_bad_fields_is_refused_when_made(case):
    """ModelCheckpoint("m-{epoch.bogus}.npz") raised a bare AttributeError after the first
    epoch, and {epoch[0]} a TypeError."""
    name, message = BAD_NAMES[case]
    with pytest.raises(ValueError) as raised:
        mn.callbacks.ModelCheckpoint(name)
    assert str(raised.value).startswith(f"ModelCheckpoint: filepath {name!r} ")
    assert message in str(raised.value)


@pytest.mark.parametrize("name, message", [
    ("m-{val_los}.npz", "KeyError: 'val_los'"),
    ("m-{val_loss:d}.npz", "ValueError: Unknown format code 'd' for object of type 'float'"),
    ("m-{epoch:.4q}.npz", "ValueError: Unknown format code 'q'"),
])
def test_a_checkpoint_name_the_logs_cannot_fill_is_refused_before_epoch_1(name, message,
                                                                          tmp_path):
    model = _small(mn.SGD(0.1))
    checkpoint = mn.callbacks.ModelCheckpoint(tmp_path / name)
    with pytest.raises(ValueError) as raised:
        model.fit(ROWS, LABELS, epochs=2, verbose=0, validation_split=0.25,
                  callbacks=[checkpoint])
    assert str(raised.value).startswith(
        f"ModelCheckpoint: filepath {str(tmp_path / name)!r} cannot be filled from the "
        f"epoch and the logs' keys (epoch, loss, accuracy, val_loss, val_accuracy): {message}")
    assert model.epochs_trained == 0 and not list(tmp_path.iterdir())


def _no_folder(tmp_path: Path) -> Path:
    return tmp_path / "missing" / "out"


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "out"


@pytest.mark.parametrize("where", [_no_folder, _a_file], ids=["missing", "a file"])
@pytest.mark.parametrize("writer", ["checkpoint", "checkpoint per epoch", "csv", "csv append"])
def test_a_folder_that_cannot_take_the_files_is_found_before_epoch_1(writer, where, tmp_path):
    """ModelCheckpoint (and CSVLogger appending) found a missing folder only when writing,
    after the first epoch had trained."""
    base = where(tmp_path)
    callback = {"checkpoint": lambda: mn.callbacks.ModelCheckpoint(f"{base}.npz"),
                "checkpoint per epoch": lambda: mn.callbacks.ModelCheckpoint(
                    f"{base}-{{epoch}}.npz"),
                "csv": lambda: mn.callbacks.CSVLogger(f"{base}.csv"),
                "csv append": lambda: mn.callbacks.CSVLogger(f"{base}.csv", append=True)}[writer]
    model = _small(mn.SGD(0.1))
    with pytest.raises(OSError, match=str(base.parent)):
        model.fit(ROWS, LABELS, epochs=2, verbose=0, callbacks=[callback()])
    assert model.epochs_trained == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_checkpoint_folder_that_cannot_be_written_is_found_before_epoch_1(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    model = _small(mn.SGD(0.1))
    with pytest.raises(PermissionError, match=f"folder {folder} cannot be written"):
        model.fit(ROWS, LABELS, epochs=2, verbose=0,
                  callbacks=[mn.callbacks.ModelCheckpoint(folder / "m.npz")])
    assert model.epochs_trained == 0


@pytest.mark.parametrize("name, message", [
    ("m-{epoch.bogus}.npz", "has the field {epoch.bogus}"),
    ("m-{epoch[0]}.npz", "has the field {epoch[0]}"),
    ("m-{val_los}.npz", "KeyError: 'val_los'"),
    ("m-{epoch:.4q}.npz", "Unknown format code 'q'"),
    ("missing/m-{epoch}.npz", "missing/m-1.npz: folder"),
])
def test_bad_checkpoint_names_through_the_cli_are_one_line(name, message, tiny_data, tmp_path,
                                                           capsys, monkeypatch):
    """Through mnistnet train --checkpoint the same names printed a Python traceback."""
    monkeypatch.chdir(tmp_path)
    line = check_main_error(["train", "--layers", "10:softmax", "--epochs", "1", "--data",
                             str(tiny_data), "--checkpoint", name, "--quiet"], capsys)
    assert message in line and "--checkpoint" in line
    assert not list(tmp_path.iterdir())


# =========================================================================== gap: AdamW

ADAMW = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3,
             weight_decay=0.04)


def _adamw_update(backend, params, grads, moments):
    """params after one AdamW update in `backend` from moments (m, v), copies all."""
    new, m, v = params.copy(), moments[0].copy(), moments[1].copy()
    with np.errstate(all="ignore"):
        (mn.fast if backend == "fast" else mn.reference).adamw_update(
            new, grads, m, v, *ADAMW.values())
    return new


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_an_adamw_step_rejected_as_non_finite_keeps_no_weight_decay(backend):
    """Where Adam's step makes a weight NaN or Inf, the weight kept its value *after* the
    decoupled weight decay: the step was rejected, its decay applied."""
    params = np.float32([1.0, -2.0, 0.5, 3.0, -1.5])
    grads = np.float32([0.3, np.inf, np.nan, -0.7, -np.inf])
    moments = np.random.default_rng(7).random((2, params.size), dtype=np.float32)
    new = _adamw_update(backend, params, grads, moments)
    rejected = ~np.isfinite(grads)
    np.testing.assert_array_equal(new[rejected], params[rejected])  # not decayed either
    # The others took the whole step, as they do alone.
    kept = ~rejected
    alone = _adamw_update(backend, params[kept], grads[kept], moments[:, kept])
    np.testing.assert_array_equal(new[kept], alone)
    assert (new[kept] != params[kept]).all()


def test_the_reference_dispatch_rejects_the_whole_adamw_step_and_says_so():
    settings = mn.AdamW(0.01, weight_decay=0.04).kernel_settings()
    params = np.float32([1.0, -2.0, 0.5])
    grads = np.float32([0.3, np.inf, -0.7])
    state = np.zeros(6, np.float32)
    new = params.copy()
    with np.errstate(all="ignore"):
        finite = mn.reference.apply_update(settings, new, grads, state, 0.01, 1)
    assert not finite
    assert new[1] == params[1] and new[0] != params[0] and new[2] != params[2]


# =========================================================================== gap: epoch numbers

class _Seen(mn.callbacks.Callback):
    """What a callback sees: params, and the epochs of on_epoch_begin and on_epoch_end."""

    def __init__(self) -> None:
        super().__init__()
        self.begun: list[int] = []
        self.ended: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.begun.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.ended.append(epoch)


def test_a_second_fit_numbers_its_epochs_as_keras_does_from_initial_epoch(tmp_path, capsys):
    """History counted within one fit call ([0]) while callbacks saw the model's total (1),
    and the log said "Epoch 1/1" for the model's second epoch; Keras with initial_epoch=1
    and epochs=2 says "Epoch 2/2", and its History and callbacks say 1."""
    model = _small(mn.SGD(0.1))
    model.fit(ROWS, LABELS, epochs=1, verbose=0)
    seen = _Seen()
    history = model.fit(ROWS, LABELS, epochs=2, verbose=2, callbacks=[
        seen, mn.callbacks.CSVLogger(tmp_path / "log.csv")])
    log = capsys.readouterr().out.splitlines()
    assert [line for line in log if line.startswith("Epoch ")] == ["Epoch 2/3", "Epoch 3/3"]
    assert history.epoch == seen.begun == seen.ended == [1, 2]
    assert seen.params["epochs"] == 3
    assert [row.split(",")[0] for row in (tmp_path / "log.csv").read_text().splitlines()] == [
        "epoch", "1", "2"]


def test_resume_through_the_cli_numbers_the_models_epochs(tiny_data, tmp_path):
    first = run_cli("train", "--layers", "10:softmax", "--epochs", "1", "--data", tiny_data,
                    "--save", "m.npz", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert _first_epoch_line(first.stdout) == "Epoch 1/1"
    resumed = run_cli("train", "--resume", "m.npz", "--epochs", "1", "--data", tiny_data,
                      "--history", "h.json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _first_epoch_line(resumed.stdout) == "Epoch 2/2"
    assert json.loads((tmp_path / "h.json").read_text())["epoch"] == [1]


# =========================================================================== gap: NaN mid-fit

class _Spoil(mn.callbacks.Callback):
    """Writes NaN into x (the caller's array, which fit reads in place) after epoch `after`
    (the model's count), as a careless callback or another thread might."""

    def __init__(self, x: np.ndarray, after: int) -> None:
        super().__init__()
        self.x, self.after = x, after

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after:
            self.x[17, 3] = np.nan


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_nan_found_mid_fit_rolls_back_to_the_last_completed_epoch(backend, tmp_path):
    """It rolled the model back to the start of fit, while the checkpoints and CSV rows of
    the epochs it undid stayed. Chosen: back to the last completed epoch, which is what the
    callbacks' files describe."""
    x = ROWS.copy()
    model = _small(mn.SGD(0.1, momentum=0.9), backend)
    model.fit(x, LABELS, epochs=1, batch_size=16, verbose=0)  # an earlier fit
    callbacks = [mn.callbacks.ModelCheckpoint(tmp_path / "ckpt-{epoch}.npz"),
                 mn.callbacks.CSVLogger(tmp_path / "log.csv"),
                 mn.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1)),
                 _Spoil(x, after=2)]
    with pytest.raises(ValueError, match=r"^x contains NaN or Inf \(found in epoch 4; the "
                                         r"model is back at the end of epoch 3, the last "
                                         r"completed one\)$"):
        model.fit(x, LABELS, epochs=5, batch_size=16, verbose=0, callbacks=callbacks)
    assert model.epochs_trained == 3 and model.optimizer.iterations == 12
    assert model.history.epoch == [1, 2]
    assert model.optimizer.learning_rate == pytest.approx(0.1 / 3)  # epoch 4's not kept
    saved = mn.Model.load(tmp_path / "ckpt-3.npz", backend=backend)
    np.testing.assert_array_equal(model.params, saved.params)
    np.testing.assert_array_equal(model.optimizer_state, saved.optimizer_state)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-2.npz", "ckpt-3.npz"]
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2"]
    # The same as three epochs trained without the NaN.
    straight = _small(mn.SGD(0.1, momentum=0.9), backend)
    straight.fit(ROWS, LABELS, epochs=1, batch_size=16, verbose=0)
    straight.fit(ROWS, LABELS, epochs=2, batch_size=16, verbose=0, callbacks=[
        mn.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))])
    np.testing.assert_array_equal(model.params, straight.params)


# =========================================================================== gap: exact resume

VAL_ROWS = np.random.default_rng(20).random((32, 6), dtype=np.float32)
VAL_LABELS = np.random.default_rng(21).integers(0, 3, 32)


def _stateful(kind: str) -> list[mn.callbacks.Callback]:
    """Fresh callbacks whose counters matter: val_loss wanders at SGD(0.5) on these rows."""
    if kind == "early stopping":
        return [mn.callbacks.EarlyStopping(patience=2, restore_best_weights=True)]
    return [mn.callbacks.ReduceLROnPlateau(patience=1, factor=0.5, min_delta=0.0, cooldown=1)]


def _train(model: mn.Model, epochs: int, callbacks) -> mn.History:
    return model.fit(ROWS, LABELS, epochs=epochs, batch_size=16, verbose=0,
                     validation_data=(VAL_ROWS, VAL_LABELS), callbacks=callbacks)


def _same_state(a: dict, b: dict) -> bool:
    """Whether two models' callback_state are equal (arrays compared by value)."""
    if a.keys() != b.keys():
        return False
    return all(s.keys() == b[key].keys() and all(np.array_equal(v, b[key][f])
                                                   for f, v in s.items())
               for key, s in a.items())


@pytest.mark.parametrize("kind", ["early stopping", "reduce on plateau"])
def test_resuming_from_a_checkpoint_with_stateful_callbacks_is_exact(kind, tmp_path):
    """A resumed EarlyStopping started counting afresh (wait 0, no best), and so did
    ReduceLROnPlateau: a run resumed from its checkpoints stopped elsewhere, restored other
    weights, or lowered the rate at other epochs. Their counters now travel in the model
    file (written after them: ModelCheckpoint comes first in the list on purpose)."""
    straight = _small(mn.SGD(0.5))
    history = _train(straight, 12, [mn.callbacks.ModelCheckpoint(tmp_path / "ckpt-{epoch}.npz"),
                                    *_stateful(kind)])
    done = straight.epochs_trained
    if kind == "early stopping":
        assert 4 <= done < 12, "no early stop: a weak check"
    else:
        assert straight.optimizer.learning_rate < 0.5 / 2, "under two reductions: a weak check"
    counting = 0  # checkpoints with some wait or cooldown under way
    for resume_at in range(1, done):
        resumed = mn.Model.load(tmp_path / f"ckpt-{resume_at}.npz")
        state = dict(next(iter(getattr(resumed, "callback_state", {None: {}}).values())))
        counting += state.get("wait", 0) > 0 or state.get("cooldown_counter", 0) > 0
        tail = _train(resumed, 12 - resume_at, _stateful(kind))
        assert resumed.epochs_trained == done, resume_at
        assert tail.epoch == history.epoch[resume_at:]
        assert tail.history == {key: values[resume_at:]
                                for key, values in history.history.items()}
        np.testing.assert_array_equal(resumed.params, straight.params)
        assert resumed.optimizer.learning_rate == straight.optimizer.learning_rate
        assert _same_state(resumed.callback_state, straight.callback_state)
    assert counting >= 2, "the counters were at rest at every checkpoint: a weak check"


def test_callback_state_carries_across_fit_calls_in_memory():
    straight = _small(mn.SGD(0.5))
    _train(straight, 12, _stateful("early stopping"))
    halves = _small(mn.SGD(0.5))
    _train(halves, 3, _stateful("early stopping"))
    _train(halves, 9, _stateful("early stopping"))
    assert halves.epochs_trained == straight.epochs_trained < 12
    np.testing.assert_array_equal(halves.params, straight.params)
    halves.callback_state.clear()  # counting afresh: the documented way
    _train(halves, 1, _stateful("early stopping"))
    assert halves.epochs_trained == straight.epochs_trained + 1


def test_resume_with_early_stopping_through_the_cli_is_exact(tiny_data, tmp_path):
    train = ["train", "--layers", "32:relu,10:softmax", "--loss", "categorical_crossentropy",
             "--lr", "0.5", "--early-stopping", "1", "--data", tiny_data, "--quiet"]
    straight = run_cli(*train, "--epochs", "12", "--checkpoint", "ckpt-{epoch}.npz", "--save",
                       "straight.npz", "--history", "straight.json", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    record = json.loads((tmp_path / "straight.json").read_text())
    stopped = len(record["epoch"])
    assert 2 <= stopped < 12, record["history"]["val_loss"]
    resumed = run_cli(*[a for a in train if a not in ("--layers", "32:relu,10:softmax", "--loss",
                                                      "categorical_crossentropy", "--lr", "0.5")],
                      "--resume", f"ckpt-{stopped - 1}.npz", "--epochs", str(13 - stopped),
                      "--save", "resumed.npz", "--history", "resumed.json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    tail = json.loads((tmp_path / "resumed.json").read_text())
    assert tail["epoch"] == record["epoch"][-1:]
    a, b = mn.Model.load(tmp_path / "straight.npz"), mn.Model.load(tmp_path / "resumed.npz")
    np.testing.assert_array_equal(b.params, a.params)
    assert _same_state(b.callback_state, a.callback_state)  # the counters, saved with it


def _first_epoch_line(stdout: str) -> str:
    """The log's first "Epoch i/n" line (train says its loss before it)."""
    return next(line for line in stdout.splitlines() if line.startswith("Epoch "))
