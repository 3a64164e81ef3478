"""Issue 18's training features, with Keras 3's names and meanings: label smoothing
(mn.losses.CategoricalCrossentropy(label_smoothing=...)) and the optimizers' weight averaging
(use_ema, ema_momentum, ema_overwrite_frequency), in both backends."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from gradcheck import central_differences, check_gradient
from tolerances import BACKWARD_RTOL, FLOAT32_GRAD_RTOL

import mnistnet as mn
from mnistnet import _kernels, fast, losses, reference

BACKENDS = (fast, reference)


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(abs(hash(repr(key))) % (1 << 32))


def small_data(rows=192, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((rows, 784), dtype=np.float32), rng.integers(0, 10, rows)


def dense_model(optimizer, loss=None, backend="fast", seed=0):
    return mn.Model([mn.Dense(24, "relu"), mn.Dense(10, "softmax")], optimizer=optimizer,
                    loss=loss, backend=backend, seed=seed)


def conv_model(optimizer, backend="fast"):
    """Every kind with weights: Conv2D, BatchNormalization (whose moving statistics are not
    averaged) and Dense."""
    return mn.Model([mn.Conv2D(4, 3), mn.BatchNormalization(), mn.Activation("relu"),
                     mn.MaxPool2D(2), mn.Flatten(), mn.Dense(10, "softmax")],
                    optimizer=optimizer, backend=backend)


# ---- label smoothing -----------------------------------------------------------------------

def test_smoothed_targets_are_keras_formula_worked_out():
    """Keras: y * (1 - s) + s / classes. One-hot rows of 10 with s = 0.1: 0.91 and 0.01."""
    one_hot = np.eye(10, dtype=np.float32)[[3, 7]]
    got = losses.smooth_targets(one_hot, 0.1)
    assert got.dtype == np.float32 and got is not one_hot
    np.testing.assert_allclose(got[0, 3], 0.91, rtol=1e-7)
    np.testing.assert_allclose(got[0, 0], 0.01, rtol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
    assert (got.argmax(axis=1) == [3, 7]).all()
    assert losses.smooth_targets(one_hot, 0.0) is one_hot  # nothing to do


def test_smoothed_crossentropy_worked_out_by_hand():
    """Softmax of logits (2, 1, 0), true class 1, s = 0.3 over 3 classes: targets (0.1, 0.8,
    0.1); loss -(0.1 log 0.66524 + 0.8 log 0.24473 + 0.1 log 0.09003) = 1.40761; its
    gradient at the logits p - t = (0.56524, -0.55527, -0.00997)."""
    probs = np.array([[0.66524096, 0.24472847, 0.09003057]], np.float32)
    targets = losses.smooth_targets(np.array([[0, 1, 0]], np.float32), 0.3)
    np.testing.assert_allclose(targets, [[0.1, 0.8, 0.1]], rtol=1e-6)
    for backend in BACKENDS:
        assert backend.crossentropy_forward(probs, targets) == pytest.approx(1.40761, abs=2e-5)
        grad = backend.crossentropy_softmax_backward(None, probs, targets)
        np.testing.assert_allclose(grad, [[0.56524, -0.55527, -0.00997]], atol=2e-5)


@pytest.mark.parametrize("smoothing", (0.05, 0.1, 0.4))
@pytest.mark.parametrize("shape", ((1, 10), (7, 10), (33, 3)))
def test_smoothed_crossentropy_kernels_match_twin_and_central_differences(shape, smoothing):
    rng = rng_for("smoothing", shape, smoothing)
    logits = rng.normal(size=shape).astype(np.float32)
    labels = rng.integers(0, shape[1], shape[0])
    targets = losses.smooth_targets(np.eye(shape[1], dtype=np.float32)[labels], smoothing)
    probs = reference.softmax_forward(None, logits)
    assert fast.crossentropy_forward(probs, targets) == pytest.approx(
        reference.crossentropy_forward(probs, targets), rel=1e-6)
    got = fast.crossentropy_softmax_backward(None, probs, targets)
    want = reference.crossentropy_softmax_backward(None, probs, targets)
    np.testing.assert_allclose(got, want, rtol=BACKWARD_RTOL, atol=1e-7)

    def loss(z):  # the smoothed loss of the logits, in float64
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return -np.sum(targets * np.log(e / e.sum(axis=1, keepdims=True))) / z.shape[0]

    check_gradient(got, central_differences(loss, logits.copy()), FLOAT32_GRAD_RTOL,
                   f"smoothed cross-entropy {shape} s={smoothing}")


def test_label_smoothing_is_accepted_where_a_loss_name_is_and_round_trips(tmp_path):
    x, y = small_data()
    loss = mn.losses.CategoricalCrossentropy(label_smoothing=0.1)
    model = dense_model(mn.Adam(1e-3), loss=loss)
    assert model.loss == "categorical_crossentropy" and model.loss_object == loss
    assert model.get_config()["loss"] == {"name": "categorical_crossentropy",
                                          "label_smoothing": 0.1}
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = mn.Model.load(tmp_path / "m.npz")
    assert loaded.loss_object == loss
    assert loaded.evaluate(x, y) == model.evaluate(x, y)
    # the defaults are written as the name, as files of earlier versions have them
    plain = dense_model(mn.Adam(1e-3), loss=mn.losses.CategoricalCrossentropy())
    assert plain.get_config()["loss"] == "categorical_crossentropy"


def test_evaluate_scores_the_smoothed_loss_and_the_true_accuracy():
    """Keras reports the loss of the smoothed targets; accuracy counts the true class."""
    x, y = small_data()
    smooth = dense_model(mn.Adam(1e-3), loss=mn.losses.CategoricalCrossentropy(0.2))
    plain = dense_model(mn.Adam(1e-3))  # the same weights (same seed)
    probs = smooth.predict(x)
    targets = losses.smooth_targets(np.eye(10, dtype=np.float32)[y], 0.2)
    want = -np.mean(np.sum(targets * np.log(np.clip(probs, 1e-7, 1 - 1e-7)), axis=1))
    scores = smooth.evaluate(x, y)
    assert scores["loss"] == pytest.approx(want, rel=1e-5)
    assert scores["loss"] != pytest.approx(plain.evaluate(x, y)["loss"], rel=1e-3)
    assert scores["accuracy"] == plain.evaluate(x, y)["accuracy"]


def test_training_with_label_smoothing_both_backends_agree_and_differ_from_none():
    x, y = small_data()
    trained = {}
    for backend in ("fast", "reference"):
        m = dense_model(mn.Adam(1e-3), loss=mn.losses.CategoricalCrossentropy(0.1),
                        backend=backend)
        trained[backend] = m.fit(x, y, epochs=2, batch_size=32, verbose=0), m.params
    np.testing.assert_allclose(trained["fast"][1], trained["reference"][1], atol=1e-5)
    assert trained["fast"][0].history["loss"] == pytest.approx(
        trained["reference"][0].history["loss"], rel=1e-5)
    plain = dense_model(mn.Adam(1e-3))
    plain.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert not np.array_equal(plain.params, trained["fast"][1])


@pytest.mark.parametrize("bad,error", [(1.0, ValueError), (-0.1, ValueError),
                                       (math.nan, ValueError), ("0.1", TypeError)])
def test_bad_label_smoothing_is_refused_by_name(bad, error):
    with pytest.raises(error, match="label_smoothing"):
        mn.losses.CategoricalCrossentropy(label_smoothing=bad)


def test_an_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        dense_model(mn.SGD(), loss=42)
    with pytest.raises(ValueError, match="unknown loss"):
        dense_model(mn.SGD(), loss={"name": "hinge"})


# ---- the weights' moving average (use_ema) ---------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS, ids=("fast", "reference"))
def test_ema_steps_worked_by_hand(backend):
    """SGD 0.1, ema_momentum 0.9: after step 1 the average is the weights (0.95, -2.1, 0.6);
    after step 2, 0.9 * that + 0.1 * the new weights (0.9, -2.2, 0.7): (0.945, -2.11, 0.61).
    Every 2 steps (ema_overwrite_frequency=2) the weights take the average."""
    grads = np.array([0.5, 1.0, -1.0], np.float32)
    for every, weights_after in ((None, [0.9, -2.2, 0.7]), (2, [0.945, -2.11, 0.61])):
        settings = mn.SGD(0.1, use_ema=True, ema_momentum=0.9,
                          ema_overwrite_frequency=every).kernel_settings()
        w, average = np.array([1.0, -2.0, 0.5], np.float32), np.zeros(3, np.float32)
        assert backend.apply_update(settings, w, grads, average, 0.1, 1)
        np.testing.assert_allclose(average, [0.95, -2.1, 0.6], rtol=1e-6)
        assert backend.apply_update(settings, w, grads, average, 0.1, 2)
        np.testing.assert_allclose(average, [0.945, -2.11, 0.61], rtol=1e-6)
        np.testing.assert_allclose(w, weights_after, rtol=1e-6)


@pytest.mark.parametrize("optimizer", [
    mn.SGD(0.05, use_ema=True), mn.SGD(0.05, momentum=0.9, nesterov=True, use_ema=True),
    mn.Adam(1e-3, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=3),
    mn.AdamW(1e-3, use_ema=True), mn.RMSprop(1e-3, momentum=0.5, use_ema=True)],
    ids=repr)
def test_ema_update_kernel_matches_its_twin_bit_for_bit(optimizer):
    """Keras' rule in float32, average = m * average + (1 - m) * w: the same bits in both."""
    rng = rng_for("ema", repr(optimizer))
    n = 1003
    settings = optimizer.kernel_settings()
    slots = optimizer.slots
    w0 = rng.normal(size=n).astype(np.float32)
    state0 = np.abs(rng.normal(size=slots * n)).astype(np.float32)
    results = []
    for backend in BACKENDS:
        w, state = w0.copy(), state0.copy()
        for t in range(1, 5):
            g = rng_for("ema-grad", t).normal(size=n).astype(np.float32)
            backend.apply_update(settings, w, g, state, np.float32(1e-3), t, 100, 900)
        results.append((w, state))
    np.testing.assert_array_equal(results[0][1][-n:], results[1][1][-n:])  # the average
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    assert (results[0][1][-n:][:100] == state0[-n:][:100]).all()  # outside start..stop


def test_fit_ends_with_the_average_in_the_weights_as_keras_and_trains_on_from_the_rest():
    """After fit the weights are the average; the weights training reached are kept, so
    that training on gives the same bits as one fit, and equal to training without EMA."""
    x, y = small_data()
    ema = dense_model(mn.Adam(1e-3, use_ema=True, ema_momentum=0.9))
    ema.fit(x, y, epochs=2, batch_size=32, verbose=0)
    plain = dense_model(mn.Adam(1e-3))
    plain.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert not np.array_equal(ema.params, plain.params)
    np.testing.assert_array_equal(ema._ema_block(), plain.params)  # the weights reached
    parts = dense_model(mn.Adam(1e-3, use_ema=True, ema_momentum=0.9))
    parts.fit(x, y, epochs=1, batch_size=32, verbose=0)
    parts.fit(x, y, epochs=1, batch_size=32, verbose=0)
    np.testing.assert_array_equal(parts.params, ema.params)
    np.testing.assert_array_equal(parts.optimizer_state, ema.optimizer_state)


def test_the_average_skips_batchnormalizations_moving_statistics():
    x, y = small_data(rows=64)
    model = conv_model(mn.Adam(1e-3, use_ema=True))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    trained = model.plan.trainable()
    assert not trained.all() and trained.any()
    plain = conv_model(mn.Adam(1e-3))
    plain.fit(x, y, epochs=1, batch_size=16, verbose=0)
    # the moving mean and variance are the trained ones, not averaged or swapped
    np.testing.assert_array_equal(model.params[~trained], plain.params[~trained])
    assert not np.array_equal(model.params[trained], plain.params[trained])


@pytest.fixture
def team_of(request):
    """Force the epoch's team of `threads` (or one thread), then put the defaults back."""

    def force(threads: int) -> None:
        _kernels._set_epoch_schedule("team" if threads > 1 else "serial")
        _kernels._set_thread_limit(threads)
        mn.set_num_threads(threads)

    yield force
    _kernels._set_epoch_schedule("auto")
    _kernels._set_thread_limit(0)
    mn.set_num_threads(int(os.environ.get("MNISTNET_NUM_THREADS", "0") or 0))


@pytest.mark.parametrize("build", (dense_model, conv_model))
def test_ema_is_bit_identical_at_one_and_two_threads(build, team_of):
    x, y = small_data(rows=512)
    params = []
    for threads in (1, 2):
        team_of(threads)
        _kernels._last_team(reset=True)
        m = build(mn.Adam(1e-3, use_ema=True, ema_momentum=0.95))
        m.fit(x, y, epochs=1, batch_size=64, verbose=0)
        assert _kernels._last_team() == ("none" if threads == 1 else "rows")
        params.append((m.params.copy(), m.optimizer_state.copy()))
    np.testing.assert_array_equal(params[0][0], params[1][0])
    np.testing.assert_array_equal(params[0][1], params[1][1])


def test_ema_survives_save_load_and_a_resume_is_exact(tmp_path):
    x, y = small_data()
    straight = dense_model(mn.SGD(0.05, momentum=0.9, use_ema=True, ema_momentum=0.8))
    straight.fit(x, y, epochs=3, batch_size=32, verbose=0)
    first = dense_model(mn.SGD(0.05, momentum=0.9, use_ema=True, ema_momentum=0.8))
    first.fit(x, y, epochs=1, batch_size=32, verbose=0)
    first.save(tmp_path / "one.npz")
    resumed = mn.Model.load(tmp_path / "one.npz")
    assert resumed.optimizer.use_ema and resumed.optimizer.ema_momentum == 0.8
    np.testing.assert_array_equal(resumed.params, first.params)  # the average, as fit left it
    assert resumed.predict(x[:5]).tolist() == first.predict(x[:5]).tolist()
    resumed.fit(x, y, epochs=2, batch_size=32, verbose=0)
    np.testing.assert_array_equal(resumed.params, straight.params)
    np.testing.assert_array_equal(resumed.optimizer_state, straight.optimizer_state)


def test_set_weights_after_fit_trains_from_them_and_keeps_the_average():
    """As Keras: the optimizer's average goes on; training starts from the weights set."""
    x, y = small_data()
    model = dense_model(mn.Adam(1e-3, use_ema=True))
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    average = model.params.copy()
    fresh = dense_model(mn.Adam(1e-3), seed=5).get_weights()
    model.set_weights(fresh)
    np.testing.assert_array_equal(model._ema_block(), average)
    np.testing.assert_array_equal(np.concatenate([w.ravel() for w in model.get_weights()]),
                                  np.concatenate([w.ravel() for w in fresh]))


def test_swap_ema_weights_scores_validation_on_the_average():
    x, y = small_data()
    val = small_data(rows=64, seed=1)
    runs = {}
    for swap in (False, True):
        m = dense_model(mn.Adam(3e-3, use_ema=True, ema_momentum=0.9))
        callbacks = [mn.callbacks.SwapEMAWeights()] if swap else []
        runs[swap] = (m.fit(x, y, epochs=2, batch_size=32, verbose=0, validation_data=val,
                            callbacks=callbacks), m)
    history, model = runs[True]
    assert history.history["loss"] == runs[False][0].history["loss"]  # training unchanged
    assert history.history["val_loss"] != runs[False][0].history["val_loss"]
    # the last epoch's val_loss is the average's, which the weights hold after fit
    assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(*val)["loss"],
                                                            rel=1e-6)
    with pytest.warns(RuntimeWarning, match="no use_ema"):
        dense_model(mn.Adam(1e-3)).fit(x, y, epochs=1, verbose=0,
                                       callbacks=[mn.callbacks.SwapEMAWeights()])


@pytest.mark.parametrize("kwargs,error", [
    ({"use_ema": 1}, TypeError), ({"use_ema": True, "ema_momentum": 1.5}, ValueError),
    ({"use_ema": True, "ema_momentum": math.nan}, ValueError),
    ({"use_ema": True, "ema_overwrite_frequency": 0}, ValueError),
    ({"use_ema": True, "ema_overwrite_frequency": 2.5}, ValueError)])
def test_bad_ema_settings_are_refused_by_name(kwargs, error):
    with pytest.raises(error, match="ema"):
        mn.Adam(**kwargs)


def test_ema_config_round_trips_and_plain_configs_are_unchanged():
    opt = mn.RMSprop(1e-3, use_ema=True, ema_momentum=0.95, ema_overwrite_frequency=10)
    config = mn.optimizers.optimizer_to_config(opt)
    assert config["use_ema"] and config["ema_overwrite_frequency"] == 10
    again = mn.optimizers.optimizer_from_config(config)
    assert again.get_config() == opt.get_config()
    assert "use_ema" not in mn.Adam().get_config()
