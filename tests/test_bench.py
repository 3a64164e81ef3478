"""`mnistnet bench` on a few synthetic rows: the comparison runs for a dense preset and the
convnet, its figures are consistent, and the peers run in processes of their own (or say why
they cannot)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import mnistnet as mn
from mnistnet import bench


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    x = rng.random((256, 784), dtype=np.float32)
    xt = rng.random((64, 784), dtype=np.float32)
    return (x, rng.integers(0, 10, 256)), (xt, rng.integers(0, 10, 64))


def test_comparison_of_a_dense_preset_and_the_convnet(tiny, monkeypatch):
    monkeypatch.setattr(bench, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(bench, "CONTEXT_GEMM_SIZE", 256)
    result = bench.run_comparison(["perceptron", "convnet"], data=tiny)
    rows = {row["preset"]: row for row in result["presets"]}
    conv = rows["convnet"]
    assert conv["recipe"]["batch_size"] == 128 and conv["layers"][0] == "Conv2D"
    assert conv["relative_weight_diff"] < 1e-3
    forward, train = mn.preset("convnet").plan.flops_per_sample()
    assert conv["epoch_gflop"] == pytest.approx((256 * train + 64 * forward) / 1e9)
    # About 4.9 MFLOP forward and 14 MFLOP forward + backward per image (design notes).
    assert 4.8e6 < forward < 5.0e6 and 13.5e6 < train < 14.5e6
    for row in rows.values():
        assert row["speedup"] == pytest.approx(row["reference_seconds_per_epoch"]
                                               / row["fast_seconds_per_epoch"])
        assert row["after_reference_over_after_pause"] > 0
    report = bench.format_report(result)
    assert "convnet" in report and "after ref" in report
    json.dumps(result)  # JSON-serialisable, as --json prints it


def test_a_peer_that_cannot_import_its_framework_says_so(tiny, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(bench.peer_config(mn.preset("perceptron"), 256, 32, 1)))
    (x, y), (xt, yt) = tiny
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    out = bench._run_peer("torch", str(config), str(tmp_path / "d.npz"), 1, 32,
                          sys.executable)
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "unavailable" in out and "torch" in out["unavailable"]
    else:
        assert out["framework"] == "pytorch" and len(out["train_seconds"]) == 1


def test_a_peer_interpreter_that_does_not_exist(tiny, tmp_path):
    out = bench._run_peer("keras", "c.json", "d.npz", 1, 32, str(tmp_path / "no-python"))
    assert "unavailable" in out and "FileNotFoundError" in out["unavailable"]


def test_the_peer_config_follows_the_schedule_step_by_step():
    """The peers get the learning rate of every step: a one-cycle schedule is followed."""
    model = mn.preset("convnet-plus")
    config = bench.peer_config(model, 1000, 128, 2)
    assert len(config["optimizer"]["rates"]) == 2 * 8
    np.testing.assert_array_equal(config["optimizer"]["rates"], model.optimizer.rates(0, 16))
    assert config["optimizer"]["class"] == "Adam" and config["loss"] == {
        "name": "categorical_crossentropy"}
    assert [layer["kind"] for layer in config["layers"]] == [
        type(layer).__name__ for layer in model.layers]


def test_keras_same_padding_is_keras():
    """PyTorch pads "same" convolutions as Keras does: the extra one after."""
    conv = mn.Conv2D(4, 4, padding="same")
    pads = mn.kinds.kind_of(conv).torch(conv, (8, 8, 1), (8, 8, 4))[0]
    assert pads["module"] == "ZeroPad2d" and pads["args"] == [(1, 2, 1, 2)]
    pool = mn.MaxPool2D(2, padding="same")
    pads = mn.kinds.kind_of(pool).torch(pool, (7, 7, 3), (4, 4, 3))[0]
    assert pads["module"] == "ConstantPad2d" and pads["args"][0] == (0, 1, 0, 1)
