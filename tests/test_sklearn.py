"""mnistnet.sklearn.MNISTNetClassifier: scikit-learn's estimator checks, Pipeline and
GridSearchCV, labels of any type, partial_fit, pickling, and agreement with mnistnet.Model.

Skipped without scikit-learn (the optional extra `mnistnet[sklearn]`), except that
MNISTNET_REQUIRE=sklearn (set by .ci/run) makes a missing scikit-learn a failure.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import mnistnet

try:
    import sklearn
except ImportError:
    sklearn = None

needs_sklearn = pytest.mark.skipif(sklearn is None, reason="scikit-learn is not installed "
                                                           "(pip install 'mnistnet[sklearn]')")


def test_sklearn_is_installed_when_required() -> None:
    if "sklearn" in os.environ.get("MNISTNET_REQUIRE", "").replace(" ", "").split(","):
        assert sklearn is not None, "MNISTNET_REQUIRE=sklearn but scikit-learn is missing"


def test_missing_sklearn_names_the_extra(tmp_path) -> None:
    script = ("import sys; sys.modules['sklearn'] = None\n"
              "try:\n    import mnistnet.sklearn\n"
              "except ImportError as exc:\n    print(exc)\n")
    # From an empty folder: the installed mnistnet, never the source tree.
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pip install 'mnistnet[sklearn]'" in result.stdout


if sklearn is not None:
    from sklearn.datasets import load_digits, make_blobs
    from sklearn.model_selection import GridSearchCV, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils.estimator_checks import parametrize_with_checks

    from mnistnet.sklearn import MNISTNetClassifier

    # Every check scikit-learn has, on the default estimator (the tutorial's hyperparameters),
    # with no expected failures: no check needed excusing. (scikit-learn skips its DataFrame
    # check without pandas and its array-API check unless SCIPY_ARRAY_API=1; .ci/run has both.)
    @parametrize_with_checks([MNISTNetClassifier()])
    def test_sklearn_estimator_checks(estimator, check) -> None:
        check(estimator)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits (bundled, no download): 1797 samples, 64 features, 10
    classes, split 75/25."""
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


@needs_sklearn
def test_pipeline_learns_digits(digits) -> None:
    X_train, X_test, y_train, y_test = digits
    clf = make_pipeline(StandardScaler(), MNISTNetClassifier())  # the tutorial's settings
    clf.fit(X_train, y_train)
    assert clf.score(X_test, y_test) > 0.93  # 0.949 with every SIMD path
    proba = clf.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.predict(X_test), clf.classes_[proba.argmax(axis=1)])


@needs_sklearn
def test_grid_search(digits) -> None:
    X_train, _, y_train, _ = digits
    grid = GridSearchCV(
        make_pipeline(StandardScaler(), MNISTNetClassifier(hidden_layer_sizes=(32,), epochs=10)),
        {"mnistnetclassifier__learning_rate": [1e-4, 0.05],
         "mnistnetclassifier__loss": ["categorical_crossentropy", "mse"]},
        cv=3)
    grid.fit(X_train, y_train)
    assert grid.best_params_["mnistnetclassifier__learning_rate"] == 0.05
    assert grid.best_score_ > 0.9  # 0.936
    assert len(grid.cv_results_["mean_test_score"]) == 4


@needs_sklearn
def test_string_labels_and_mse() -> None:
    X, y = make_blobs(n_samples=200, centers=3, random_state=0)
    names = np.array(["cat", "dog", "emu"])[y]
    clf = MNISTNetClassifier(hidden_layer_sizes=(16,), loss="mse", learning_rate=0.5,
                             epochs=20).fit(X, names)
    assert list(clf.classes_) == ["cat", "dog", "emu"]
    assert clf.predict(X).dtype == names.dtype
    assert clf.score(X, names) > 0.9  # 0.945
    assert clf.model_.layers[-1].activation == "sigmoid"


@needs_sklearn
def test_same_training_as_model() -> None:
    """random_state=s trains exactly as mnistnet.Model(seed=s) on the label codes."""
    X, y = make_blobs(n_samples=150, n_features=5, centers=4, random_state=1)
    X = X.astype(np.float32)
    labels = np.array([10, 20, 30, 40])[y]
    clf = MNISTNetClassifier(hidden_layer_sizes=(8, 6), epochs=3, random_state=7).fit(X, labels)
    model = mnistnet.Model([mnistnet.Dense(8, "relu"), mnistnet.Dense(6, "relu"),
                            mnistnet.Dense(4, "softmax")], input_dim=5,
                           loss="categorical_crossentropy", seed=7)
    history = model.fit(X, y, epochs=3, verbose=0)
    for got, want in zip(clf.model_.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert clf.loss_curve_ == history.history["loss"]


@needs_sklearn
def test_partial_fit() -> None:
    X, y = make_blobs(n_samples=120, centers=3, random_state=2)
    clf = MNISTNetClassifier(hidden_layer_sizes=(8,), learning_rate=0.1)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:60], y[:60], classes=[0, 1, 2])
    clf.partial_fit(X[60:], y[60:])
    assert clf.model_.epochs_trained == 2 and len(clf.loss_curve_) == 2
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X[:5], np.array([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="differs from classes_"):
        clf.partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X[:, :1], y)


@needs_sklearn
def test_pickle_keeps_training_state() -> None:
    X, y = make_blobs(n_samples=100, centers=2, random_state=3)
    clf = MNISTNetClassifier(hidden_layer_sizes=(4,), epochs=2).fit(X, y)
    copy = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(copy.predict_proba(X), clf.predict_proba(X))
    clf.partial_fit(X, y)
    copy.partial_fit(X, y)  # same shuffle for epoch 3, so the same weights
    for got, want in zip(copy.model_.get_weights(), clf.model_.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


@needs_sklearn
def test_a_failed_fit_leaves_no_model() -> None:
    X = np.zeros((4, 2))
    clf = MNISTNetClassifier()
    with pytest.raises(ValueError, match=r"at least 2 classes; got 1 class \['a'\]"):
        clf.fit(X, ["a"] * 4)
    with pytest.raises(sklearn.exceptions.NotFittedError):
        clf.predict(X)
    with pytest.raises(ValueError, match="got 0 classes"):
        clf.partial_fit(X, ["a"] * 4, classes=[])


@needs_sklearn
@pytest.mark.parametrize(("params", "error", "match"), [
    ({"loss": "hinge"}, ValueError, "unknown loss 'hinge'; valid: categorical_crossentropy, mse"),
    ({"activation": "swish"}, ValueError, "unknown activation 'swish'"),
    ({"random_state": -1}, ValueError, "random_state must be >= 0"),
    ({"random_state": "x"}, TypeError, "random_state must be"),
    ({"backend": "gpu"}, ValueError, "unknown backend 'gpu'"),
    ({"learning_rate": 0.0}, ValueError, "learning_rate must be"),
])
def test_bad_parameters_fail_in_fit(params, error, match) -> None:
    X, y = make_blobs(n_samples=20, centers=2, random_state=0)
    clf = MNISTNetClassifier(**params)  # set without checks, as scikit-learn requires
    with pytest.raises(error, match=match):
        clf.fit(X, y)
