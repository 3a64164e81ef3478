"""fit's Keras features: learning-rate schedules (Keras' formulas at chosen steps, both
backends alike), callbacks (EarlyStopping, ModelCheckpoint, ReduceLROnPlateau,
LearningRateScheduler, CSVLogger, a custom one), validation_split, exact resume through a
file and a new process, and the errors bad arguments give.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tolerances import assert_close

import mnistnet as mn
from mnistnet import saving, schedules
from mnistnet.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
)

# ---- schedules ------------------------------------------------------------------------------

# (schedule, {step: Keras' value worked out by hand})
SCHEDULE_VALUES = [
    (schedules.ExponentialDecay(0.1, 10, 0.5),
     {0: 0.1, 5: 0.1 * math.sqrt(0.5), 10: 0.05, 20: 0.025}),
    (schedules.ExponentialDecay(0.1, 10, 0.5, staircase=True), {9: 0.1, 10: 0.05, 25: 0.025}),
    (schedules.CosineDecay(0.1, 100), {0: 0.1, 50: 0.05, 100: 0.0, 150: 0.0}),
    (schedules.CosineDecay(0.1, 100, alpha=0.1), {50: 0.055, 100: 0.01, 200: 0.01}),
    # Warmup from 0.01 to 0.1 over 10 steps, then the cosine from 0.1 over 100.
    (schedules.CosineDecay(0.01, 100, warmup_target=0.1, warmup_steps=10),
     {0: 0.01, 5: 0.055, 10: 0.1, 60: 0.05, 110: 0.0}),
    (schedules.CosineDecay(0.0, 50, warmup_target=0.2, warmup_steps=4), {0: 0.0, 1: 0.05}),
    (schedules.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]),
     {0: 1.0, 10: 1.0, 11: 0.5, 20: 0.5, 21: 0.1, 1000: 0.1}),
    # Up from 1 / 25 to 1 by step 0.3 * 100 - 1 = 29, down to 1 / 25e4 at step 99; halfway
    # down (step 64) the cosine is at its middle.
    (schedules.OneCycle(1.0, 100), {0: 0.04, 29: 1.0, 64: (1.0 + 4e-6) / 2, 99: 4e-6,
                                    500: 4e-6}),
]


@pytest.mark.parametrize(("schedule", "values"), SCHEDULE_VALUES,
                         ids=[repr(s) for s, _ in SCHEDULE_VALUES])
def test_schedule_matches_keras_formula(schedule, values):
    for step, want in values.items():
        assert schedule(step) == pytest.approx(want, rel=1e-6, abs=1e-9), f"step {step}"
    rates = schedule.rates(0, max(values) + 1)
    assert rates.dtype == np.float32
    for step, want in values.items():
        assert rates[step] == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_schedule_config_round_trips_through_a_saved_model(tmp_path):
    rate = schedules.CosineDecay(0.01, 100, alpha=0.2, warmup_target=0.1, warmup_steps=10)
    model = mn.Model([mn.Dense(3)], input_dim=4, optimizer=mn.AdamW(rate, weight_decay=0.01))
    model.save(tmp_path / "m.npz")
    loaded = mn.Model.load(tmp_path / "m.npz").optimizer
    assert isinstance(loaded, mn.AdamW) and loaded.weight_decay == 0.01
    assert loaded.learning_rate.get_config() == rate.get_config()
    np.testing.assert_array_equal(loaded.rates(5, 200), rate.rates(5, 200))


def _dense_model(backend="fast", optimizer=None, seed=0):
    return mn.Model([mn.Dense(24, activation="relu"), mn.Dense(10, activation="softmax")],
                    input_dim=20, loss="categorical_crossentropy",
                    optimizer=optimizer or mn.SGD(0.1), seed=seed, backend=backend)


def _data(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 20), dtype=np.float32)
    return x, (x[:, :10].argmax(axis=1) + (x[:, 10] > 0.5)) % 10  # learnable labels


def test_schedule_gives_the_same_weights_in_both_backends_over_100_steps():
    x, y = _data()
    weights = {}
    for backend in ("fast", "reference"):
        model = _dense_model(backend, mn.SGD(schedules.ExponentialDecay(0.5, 20, 0.3)))
        model.fit(x, y, epochs=1, batch_size=10, verbose=0)  # 100 steps
        assert model.optimizer.iterations == 100
        weights[backend] = model.params
    assert_close(weights["fast"], weights["reference"], 1e-5, "SGD + ExponentialDecay")
    constant = _dense_model(optimizer=mn.SGD(0.5))
    constant.fit(x, y, epochs=1, batch_size=10, verbose=0)
    assert not np.allclose(constant.params, weights["fast"], atol=1e-3)  # the rates mattered


def test_schedule_continues_across_fit_calls():
    # The schedule is a function of the optimizer's step, not of the fit call.
    x, y = _data(300)
    straight = _dense_model(optimizer=mn.Adam(schedules.OneCycle(0.01, 60)))
    straight.fit(x, y, epochs=2, batch_size=10, verbose=0)
    split = _dense_model(optimizer=mn.Adam(schedules.OneCycle(0.01, 60)))
    split.fit(x, y, epochs=1, batch_size=10, verbose=0)
    split.fit(x, y, epochs=1, batch_size=10, verbose=0)
    np.testing.assert_array_equal(split.params, straight.params)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: schedules.PiecewiseConstantDecay([20, 10], [1, 2, 3]), "strictly increasing"),
    (lambda: schedules.PiecewiseConstantDecay([10, 10], [1, 2, 3]), "strictly increasing"),
    (lambda: schedules.PiecewiseConstantDecay([10], [1.0]), "one more entry"),
    (lambda: schedules.ExponentialDecay(0.1, 0, 0.5), "decay_steps must be"),
    (lambda: schedules.CosineDecay(-0.1, 10), "initial_learning_rate must be"),
    (lambda: schedules.CosineDecay(0.1, 10, warmup_steps=5), "needs warmup_target"),
    (lambda: schedules.OneCycle(0.1, 100, pct_start=1.0), "pct_start must lie"),
])
def test_bad_schedule_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---- callbacks ------------------------------------------------------------------------------

class Recorder(Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin", dict(self.params)))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end",))


def test_callback_hooks_order_epochs_and_logs():
    x, y = _data(200)
    model, recorder = _dense_model(), Recorder()
    model.fit(x, y, epochs=1, batch_size=50, verbose=0)  # the model's epoch count goes on
    model.fit(x, y, epochs=2, batch_size=50, verbose=0, validation_data=(x[:50], y[:50]),
              callbacks=[recorder])
    kinds = [c[0] for c in recorder.calls]
    assert kinds == ["train_begin", "epoch_begin", "epoch_end", "epoch_begin", "epoch_end",
                     "train_end"]
    # epochs: where this fit ends in the model's count (Keras' epochs with initial_epoch 1).
    assert recorder.calls[0][1] == {"epochs": 3, "steps": 4, "verbose": 0, "metrics": [
        "loss", "accuracy", "val_loss", "val_accuracy"]}
    assert [c[1] for c in recorder.calls if c[0] == "epoch_end"] == [1, 2]
    assert model.history.epoch == [1, 2]  # as the callbacks count them
    logs = recorder.calls[-2][2]
    assert logs == {key: model.history.history[key][-1] for key in logs}
    assert set(logs) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_early_stopping_restores_the_best_epoch_bit_identical_to_its_checkpoint(tmp_path):
    x, y = _data(400)
    xv, yv = _data(200, seed=1)
    # A large rate: the validation loss wanders, so the best epoch is not the last.
    model = _dense_model(optimizer=mn.SGD(2.0))
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    model.fit(x, y, epochs=12, batch_size=20, verbose=0, validation_data=(xv, yv),
              callbacks=[ModelCheckpoint(tmp_path / "epoch-{epoch:02d}.npz"), stopper])
    val = model.history.history["val_loss"]
    best = int(np.argmin(val))
    assert stopper.best_epoch == best and stopper.best == val[best]
    if stopper.stopped_epoch:  # it stopped `patience` epochs after the best one
        assert len(val) == best + 3 and stopper.stopped_epoch == best + 2
    assert best < len(val) - 1, "the last epoch was the best: a weak check"
    saved = mn.Model.load(tmp_path / f"epoch-{best + 1:02d}.npz")
    for got, want in zip(model.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    x, y = _data(200)
    model = _dense_model()
    # min_delta larger than any change: no epoch after the first improves.
    stopper = EarlyStopping(monitor="loss", min_delta=100.0, patience=2)
    model.fit(x, y, epochs=10, batch_size=50, verbose=0, callbacks=[stopper])
    assert len(model.history.epoch) == 3 and stopper.stopped_epoch == 2
    assert model.epochs_trained == 3 and model.stop_training


def test_save_best_only_writes_only_on_improvement(tmp_path):
    x, y = _data(400)
    xv, yv = _data(200, seed=1)
    model = _dense_model(optimizer=mn.SGD(2.0))
    checkpoint = ModelCheckpoint(tmp_path / "best-{epoch}-{val_loss:.4f}.npz",
                                 save_best_only=True)
    model.fit(x, y, epochs=8, batch_size=20, verbose=0, validation_data=(xv, yv),
              callbacks=[checkpoint])
    val = model.history.history["val_loss"]
    improved = [e for e in range(len(val)) if val[e] < min(val[:e], default=np.inf)]
    written = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("best-*.npz"))
    assert written == [e + 1 for e in improved]
    assert len(improved) < len(val), "every epoch improved: a weak check"
    last = improved[-1]
    assert (tmp_path / f"best-{last + 1}-{val[last]:.4f}.npz").exists()
    assert checkpoint.last_saved == str(tmp_path / f"best-{last + 1}-{val[last]:.4f}.npz")


def test_reduce_lr_on_plateau_and_learning_rate_scheduler():
    x, y = _data(200)
    model = _dense_model(optimizer=mn.SGD(0.2))
    reducer = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=100.0)
    model.fit(x, y, epochs=4, batch_size=50, verbose=0, callbacks=[reducer])
    # Epoch 0 improves on infinity; each later one does not, and halves the rate after it.
    assert model.optimizer.learning_rate == pytest.approx(0.2 * 0.5 ** 3)
    assert model.history.history["learning_rate"] == pytest.approx([0.2, 0.2, 0.1, 0.05])

    scheduled = _dense_model(optimizer=mn.SGD(1.0))
    scheduled.fit(x, y, epochs=3, batch_size=50, verbose=0,
                  callbacks=[LearningRateScheduler(lambda epoch, lr: 0.3 / (epoch + 1))])
    by_hand = _dense_model(optimizer=mn.SGD(1.0))
    for epoch in range(3):
        by_hand.optimizer.learning_rate = 0.3 / (epoch + 1)
        by_hand.fit(x, y, epochs=1, batch_size=50, verbose=0)
    np.testing.assert_array_equal(scheduled.params, by_hand.params)
    assert scheduled.history.history["learning_rate"] == pytest.approx([0.3, 0.15, 0.1])


def test_csv_logger_writes_a_row_per_epoch(tmp_path):
    x, y = _data(200)
    path = tmp_path / "log.csv"
    model = _dense_model()
    first = model.fit(x, y, epochs=2, batch_size=50, verbose=0, validation_split=0.25,
                      callbacks=[CSVLogger(path)])
    second = model.fit(x, y, epochs=1, batch_size=50, verbose=0,
                       callbacks=[CSVLogger(path, append=True)])
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    for row, history, i in ((rows[1], first, 0), (rows[2], first, 1)):
        assert [float(v) for v in row[1:]] == [history.history[k][i] for k in rows[0][1:]]
    assert float(rows[3][2]) == second.history["loss"][0]
    assert rows[3][3:] == ["NA", "NA"]  # the appended epoch had no validation


def test_an_exception_in_a_callback_reaches_the_caller_after_a_completed_epoch():
    x, y = _data(200)

    class Boom(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("boom")

    model = _dense_model()
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, epochs=5, batch_size=50, verbose=0, callbacks=[Boom()])
    two = _dense_model()
    two.fit(x, y, epochs=2, batch_size=50, verbose=0)
    assert model.epochs_trained == 2
    np.testing.assert_array_equal(model.params, two.params)


def test_a_callback_may_stop_training():
    x, y = _data(200)

    class StopAfterOne(Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    model = _dense_model()
    model.fit(x, y, epochs=5, batch_size=50, verbose=0, callbacks=[StopAfterOne()])
    assert model.history.epoch == [0] and model.epochs_trained == 1


# ---- validation_split ---------------------------------------------------------------------------

def test_validation_split_holds_out_the_last_rows_before_shuffling():
    x, y = _data(500)
    split = _dense_model()
    split.fit(x, y, epochs=2, batch_size=25, verbose=0, validation_split=0.2)
    explicit = _dense_model()
    explicit.fit(x[:400], y[:400], epochs=2, batch_size=25, verbose=0,
                 validation_data=(x[400:], y[400:]))
    np.testing.assert_array_equal(split.params, explicit.params)
    assert split.history.history == explicit.history.history
    assert split.history.history["val_loss"][-1] == pytest.approx(
        split.evaluate(x[400:], y[400:])["loss"])


# ---- exact resume -----------------------------------------------------------------------------

RESUME_MODEL = """
import numpy as np
import mnistnet as mn

def build():
    rate = mn.schedules.CosineDecay(0.001, 200, warmup_target=0.01, warmup_steps=20)
    return mn.Model([mn.RandomTranslation(0.2, 0.2),
                     mn.Conv2D(4, 3, kernel_regularizer=mn.regularizers.L2(1e-3)),
                     mn.BatchNormalization(), mn.Activation("relu"), mn.MaxPool2D(2),
                     mn.Flatten(), mn.Dropout(0.3), mn.Dense(10, activation="softmax")],
                    input_shape=(10, 10, 1), loss="categorical_crossentropy",
                    optimizer=mn.AdamW(rate), seed=11)

def data():
    rng = np.random.default_rng(5)
    return rng.random((240, 10, 10, 1), dtype=np.float32), rng.integers(0, 10, 240)
"""


def test_resume_through_a_file_in_a_new_process_is_bit_identical(tmp_path):
    namespace: dict = {}
    exec(RESUME_MODEL, namespace)  # the same definitions the new process runs
    x, y = namespace["data"]()
    straight = namespace["build"]()
    straight.fit(x, y, epochs=10, batch_size=32, verbose=0)
    first = namespace["build"]()
    first.fit(x, y, epochs=5, batch_size=32, verbose=0)
    first.save(tmp_path / "half.npz")
    script = RESUME_MODEL + textwrap.dedent(f"""
        x, y = data()
        model = mn.Model.load({str(tmp_path / "half.npz")!r})
        assert model.epochs_trained == 5 and model.fit_batch_size == 32
        model.fit(x, y, epochs=5, batch_size=32, verbose=0)
        model.save({str(tmp_path / "resumed.npz")!r})
    """)
    # From tmp_path: in the repository root the source folder would shadow the installed package.
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=tmp_path)
    resumed = mn.Model.load(tmp_path / "resumed.npz")
    np.testing.assert_array_equal(resumed.params, straight.params)
    np.testing.assert_array_equal(resumed.optimizer_state, straight.optimizer_state)
    assert resumed.optimizer.iterations == straight.optimizer.iterations == 80
    assert not np.array_equal(first.params, straight.params)


# ---- bad arguments ------------------------------------------------------------------------------

def test_unknown_monitor_key_fails_before_training():
    x, y = _data(100)
    model = _dense_model()
    before = model.params.copy()
    with pytest.raises(ValueError, match=r"monitor 'val_loss' is not a key of the logs; they "
                                         r"hold loss, accuracy \(val_ keys need"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match="monitor 'val_acc' is not a key"):
        model.fit(x, y, epochs=2, verbose=0, validation_split=0.1,
                  callbacks=[ModelCheckpoint("never.npz", monitor="val_acc",
                                             save_best_only=True)])
    with pytest.raises(ValueError, match=r"filepath 'm-\{val_lss\}.npz' cannot be filled"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[ModelCheckpoint("m-{val_lss}.npz")])
    np.testing.assert_array_equal(model.params, before)
    assert model.epochs_trained == 0


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda: EarlyStopping(patience=-1), ValueError, "patience must be >= 0"),
    (lambda: EarlyStopping(patience=1.5), TypeError, "patience must be an int"),
    (lambda: EarlyStopping(mode="up"), ValueError, "mode must be"),
    (lambda: ReduceLROnPlateau(factor=1.0), ValueError, r"factor must lie in \(0, 1\)"),
    (lambda: ReduceLROnPlateau(patience=-2), ValueError, "patience must be >= 0"),
    (lambda: LearningRateScheduler(0.1), TypeError, "schedule must be callable"),
    (lambda: CSVLogger("x.csv", separator=",,"), ValueError, "separator"),
    (lambda: mn.regularizers.L2(-0.1), ValueError, "l2 must be a finite number >= 0"),
    (lambda: mn.AdamW(weight_decay=-1), ValueError, "weight_decay must be"),
    (lambda: mn.RMSprop(rho=1.0), ValueError, r"rho must lie in \[0, 1\)"),
    (lambda: mn.SGD(momentum=1.0), ValueError, r"momentum must lie in \[0, 1\)"),
    (lambda: mn.BatchNormalization(momentum=1.2), ValueError, r"momentum must lie in \[0, 1\)"),
])
def test_bad_callback_and_optimizer_arguments_are_named(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("split", [1.0, -0.1, 1.5, float("nan")])
def test_validation_split_outside_0_1_is_an_error(split):
    x, y = _data(100)
    with pytest.raises(ValueError, match=r"validation_split must lie in \(0, 1\)"):
        _dense_model().fit(x, y, verbose=0, validation_split=split)


def test_validation_split_with_validation_data_is_an_error():
    x, y = _data(100)
    with pytest.raises(ValueError, match="validation_data or validation_split, not both"):
        _dense_model().fit(x, y, verbose=0, validation_split=0.2, validation_data=(x, y))
    with pytest.raises(ValueError, match="too few to split"):
        _dense_model().fit(x[:1], y[:1], verbose=0, validation_split=0.1)


def test_nan_in_the_held_out_rows_names_validation_split():
    x, y = _data(100)
    x[95, 3] = np.nan  # in the last 10%: a validation row
    with pytest.raises(ValueError,
                       match=r"^x's last 0.1 \(validation_split\) contains NaN or Inf$"):
        _dense_model().fit(x, y, verbose=0, validation_split=0.1)


def test_a_schedule_with_reduce_lr_on_plateau_is_an_error():
    x, y = _data(100)
    model = _dense_model(optimizer=mn.Adam(schedules.ExponentialDecay(0.01, 10, 0.9)))
    with pytest.raises(ValueError, match="ReduceLROnPlateau sets the learning rate, but the "
                                         "optimizer's is a schedule"):
        model.fit(x, y, verbose=0, callbacks=[ReduceLROnPlateau(monitor="loss")])


def test_callbacks_must_be_callbacks():
    x, y = _data(100)
    with pytest.raises(TypeError, match=r"callbacks\[0\] must be a mnistnet.callbacks"):
        _dense_model().fit(x, y, verbose=0, callbacks=[print])
    with pytest.raises(TypeError, match="callbacks must be a list"):
        _dense_model().fit(x, y, verbose=0, callbacks=EarlyStopping())


def test_checkpoint_file_is_written_atomically(tmp_path, monkeypatch):
    # A failure in the middle of writing the next epoch's checkpoint (here: np.savez raises
    # after writing part of the file, as Ctrl-C or a full disk would) leaves the previous
    # epoch's file as it was, and no stray files.
    x, y = _data(100)
    path = tmp_path / "ckpt.npz"
    model = _dense_model()
    model.fit(x, y, epochs=1, batch_size=50, verbose=0, callbacks=[ModelCheckpoint(path)])
    before = path.read_bytes()
    writes = []

    def half_written(file, **arrays):
        file.write(b"PK\x03\x04 half a checkpoint")
        writes.append(file)
        raise KeyboardInterrupt

    monkeypatch.setattr(saving.np, "savez", half_written)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=3, batch_size=50, verbose=0, callbacks=[ModelCheckpoint(path)])
    assert len(writes) == 1  # the write really started
    assert path.read_bytes() == before
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["ckpt.npz"]
