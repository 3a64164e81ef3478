"""scikit-learn interface: MNISTNetClassifier, a classifier estimator around mnistnet.Model.

    pip install "mnistnet[sklearn]"

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from mnistnet.sklearn import MNISTNetClassifier

    clf = make_pipeline(StandardScaler(), MNISTNetClassifier(epochs=10))
    clf.fit(X_train, y_train).score(X_test, y_test)

The network is Dense(h, activation) for each h in hidden_layer_sizes, then one output per
class: softmax with loss="categorical_crossentropy", sigmoid with loss="mse" (the tutorial's
two set-ups). Training is the Model's: minibatch SGD, Glorot-uniform start, an epoch order
shuffled from the seed. `random_state=s` (an int) trains exactly as Model(..., seed=s).

scikit-learn conventions, where they differ from mnistnet.Model's:
- X may hold any real numbers, integers included; they are converted to float32 as they are
  (nothing is divided by 255: put a scaler in front, as in the pipeline above).
- y holds arbitrary labels (ints, strings, ...); `classes_` is their sorted set, as with
  LabelEncoder, and predict returns labels from it.
- predict_proba rows sum to 1: the softmax outputs, or with loss="mse" the sigmoid outputs
  divided by their sum (scores, not calibrated probabilities).

Parallel searches: a fit trains on as many threads as OpenMP allows the calling thread
(mnistnet.get_num_threads), so joblib's and Dask's ways of limiting threads apply and nested
parallelism does not oversubscribe the cores. On a Dask cluster (pip install
"mnistnet[dask]"), whose workers run with OMP_NUM_THREADS=1:

    import joblib
    from distributed import Client, LocalCluster
    from sklearn.model_selection import GridSearchCV

    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster), \
            joblib.parallel_config("dask"):
        search = GridSearchCV(MNISTNetClassifier(epochs=5),
                              {"learning_rate": [0.003, 0.01, 0.03]}, cv=3).fit(X, y)

Every fit gives the same bits wherever it runs, so the search chooses (and scores) exactly as
with n_jobs=1. joblib's default process backend (loky) sets OMP_NUM_THREADS in its workers,
which mnistnet follows too. OpenMP keeps its setting per thread, so
threadpoolctl.threadpool_limits reaches the fits of the thread that calls it only: under
joblib's threading backend, call mnistnet.set_num_threads(1) (process-wide) instead.
"""

from __future__ import annotations

import numbers

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # scikit-learn missing, or older than 1.6 (no validate_data)
    raise ImportError(
        "mnistnet.sklearn needs scikit-learn >= 1.6, an optional dependency: "
        "pip install 'mnistnet[sklearn]'"
    ) from exc

from mnistnet.layers import Dense
from mnistnet.model import Model
from mnistnet.optimizers import SGD

__all__ = ["MNISTNetClassifier"]

OUTPUT_ACTIVATION = {"categorical_crossentropy": "softmax", "mse": "sigmoid"}


class MNISTNetClassifier(ClassifierMixin, BaseEstimator):
    """A multilayer perceptron classifier trained by mnistnet's compiled kernels.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(128, 64)
        Width of each hidden layer, input side first; () trains a single-layer perceptron.
    activation : {"relu", "sigmoid", "tanh", "linear"}, default="relu"
        Activation of the hidden layers.
    loss : {"categorical_crossentropy", "mse"}, default="categorical_crossentropy"
        Cross-entropy on a softmax output layer, or mean squared error on a sigmoid one.
    learning_rate : float, default=0.01
        SGD step size (Keras' default).
    epochs : int, default=30
        Passes over the training data in `fit` (`partial_fit` makes one).
    batch_size : int, default=32
        Rows per SGD step (capped at the number of samples).
    random_state : int >= 0, RandomState or None, default=0
        Seed of the weight initialisation and of every epoch's shuffle. An int is used as the
        Model's seed; None or a RandomState draws one.
    backend : {"fast", "reference"}, default="fast"
        Compiled kernels, or their NumPy twins.
    verbose : int, default=0
        Passed to Model.fit: 0 silent, 1 or 2 Keras' per-epoch log.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted.
    n_features_in_ : int
        Number of features seen in fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names seen in fit, when X had string column names.
    model_ : mnistnet.Model
        The trained network (save it with `model_.save(path)`).
    loss_curve_ : list of float
        Training loss of every epoch, over fit and the partial_fit calls after it.
    """

    def __init__(self, hidden_layer_sizes=(128, 64), activation="relu",
                 loss="categorical_crossentropy", learning_rate=0.01, epochs=30,
                 batch_size=32, random_state=0, backend="fast", verbose=0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.loss = loss
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.random_state = random_state
        self.backend = backend
        self.verbose = verbose

    # -- training --------------------------------------------------------------------------
    def fit(self, X, y):
        """Train a new network on X (n_samples, n_features) and labels y (n_samples,)."""
        X, y = validate_data(self, X, y, dtype=np.float32, order="C", reset=True)
        check_classification_targets(y)
        self._start(X.shape[1], np.unique(y))
        self._train(X, y, self.epochs)
        return self

    def partial_fit(self, X, y, classes=None):
        """One epoch over X, y; the first call (before any fit) creates the network and needs
        `classes`, every label that will ever be seen."""
        first = not self.__sklearn_is_fitted__()
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        X, y = validate_data(self, X, y, dtype=np.float32, order="C", reset=first)
        check_classification_targets(y)
        if first:
            self._start(X.shape[1], np.unique(classes))
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes={classes!r} differs from classes_="
                             f"{self.classes_.tolist()!r} of the first call")
        self._train(X, y, 1)
        return self

    def _start(self, n_features, classes):
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; "
                             f"got {len(classes)} class{'' if len(classes) == 1 else 'es'} "
                             f"{np.asarray(classes).tolist()!r}")
        model = self._new_model(n_features, len(classes))
        self.classes_ = classes
        self.model_ = model
        self.loss_curve_ = []

    def _new_model(self, n_features, n_classes) -> Model:
        if self.loss not in OUTPUT_ACTIVATION:
            raise ValueError(f"unknown loss {self.loss!r}; valid: "
                             f"{', '.join(OUTPUT_ACTIVATION)}")
        hidden = self.hidden_layer_sizes
        hidden = [hidden] if isinstance(hidden, numbers.Integral) else list(hidden)
        layers = [Dense(units, activation=self.activation) for units in hidden]
        layers.append(Dense(n_classes, activation=OUTPUT_ACTIVATION[self.loss]))
        return Model(layers, input_dim=n_features, loss=self.loss,
                     optimizer=SGD(self.learning_rate), seed=self._seed(),
                     backend=self.backend)

    def _seed(self) -> int:
        rs = self.random_state
        if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
            if rs < 0:
                raise ValueError(f"random_state must be >= 0, got {rs}")
            return int(rs)
        if rs is None or isinstance(rs, np.random.RandomState):
            return int(check_random_state(rs).randint(np.iinfo(np.int32).max))
        raise TypeError(f"random_state must be an int >= 0, a numpy RandomState or None, "
                        f"got {rs!r}")

    def _train(self, X, y, epochs):
        codes = np.searchsorted(self.classes_, y)
        known = codes < len(self.classes_)
        known[known] = self.classes_[codes[known]] == y[known]
        if not known.all():
            raise ValueError(f"y has labels that are not in classes_ "
                             f"{self.classes_.tolist()!r}: {np.unique(y[~known]).tolist()!r}")
        history = self.model_.fit(X, codes, epochs=epochs, batch_size=self.batch_size,
                                  verbose=self.verbose)
        self.loss_curve_.extend(history.history.get("loss", []))

    def __sklearn_is_fitted__(self):
        """Fitted once a network exists (a fit that failed on its data leaves none)."""
        return hasattr(self, "model_")

    # -- inference -------------------------------------------------------------------------
    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns in the order of classes_."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        proba = self.model_.predict(X).astype(np.float64)
        sums = proba.sum(axis=1, keepdims=True)
        # Softmax rows already sum to 1 (renormalised in float64: exactly 1 to rounding).
        # Sigmoid scores that all underflowed to 0 say nothing: uniform.
        empty = sums[:, 0] <= 0
        proba[empty] = 1.0
        sums[empty] = proba.shape[1]
        return proba / sums

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """The most probable class label of each row of X."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
