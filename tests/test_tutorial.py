"""The tutorial's figures at epoch 20 (fast backend, seed 0, SGD 0.01, batch 32).

The cross-entropy preset is checked through the real CLI in test_cli; these two run in-process.
"""

import os

import pytest

import mnistnet as mn

DATA = os.environ.get("MNISTNET_DATA")


@pytest.mark.slow
@pytest.mark.skipif(not DATA, reason="set MNISTNET_DATA to the MNIST folder")
@pytest.mark.parametrize("name, floor, tutorial", [
    ("perceptron", 0.85, 0.864),
    ("hidden-relu", 0.89, 0.901),
])
def test_preset_reaches_the_tutorials_accuracy_at_epoch_20(name, floor, tutorial):
    (x, y), (xt, yt) = mn.load_mnist(DATA)
    model = mn.preset(name, seed=0, backend="fast")
    history = model.fit(x, y, epochs=20, batch_size=32, validation_data=(xt, yt), verbose=0)
    val = history.history["val_accuracy"]
    assert len(val) == 20
    assert val[-1] >= floor, f"{name}: val_accuracy {val[-1]:.4f} at epoch 20"
    # A faithful reproduction lands near the tutorial's own figure, not just above the floor.
    assert abs(val[-1] - tutorial) < 0.01, f"{name}: {val[-1]:.4f} vs the tutorial's {tutorial}"
