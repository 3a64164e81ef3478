"""mnistnet: train and run small neural networks (dense and convolutional) on MNIST-style
images, fast.

    import mnistnet as mn
    (x_train, y_train), (x_test, y_test) = mn.load_mnist()
    model = mn.preset("cross-entropy")
    model.fit(x_train, y_train, epochs=30, validation_data=(x_test, y_test))

Environment: MNISTNET_SIMD=avx512|avx2|sse2|neon|scalar forces a GEMM path (an error if this
CPU lacks it); MNISTNET_NUM_THREADS=n sets the kernels' thread count, as set_num_threads(n)
does (default: OpenMP's, see get_num_threads). Importing mnistnet sets GOMP_SPINCOUNT=10000
and KMP_BLOCKTIME=1 unless they are set.
"""

import os as _os

from mnistnet._version import __version__

# Idle OpenMP threads spin before they sleep: libgomp 300,000 times, libomp for 200 ms. On a
# busy machine the spinning steals the cores the work needs and a batch-32 step slows down
# 5-10x; a short spin still keeps the threads awake between the GEMMs of one step. Only
# effective if no OpenMP runtime is loaded yet; your own settings win.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")
_os.environ.setdefault("KMP_BLOCKTIME", "1")

try:
    from mnistnet import fast
except ImportError:  # the source folder without its compiled extensions
    from mnistnet._source_tree import missing_extensions

    raise missing_extensions() from None
from mnistnet import (
    callbacks,
    datasets,
    kinds,
    layers,
    losses,
    reference,
    regularizers,
    schedules,
)
from mnistnet.data import load_mnist
from mnistnet.int8 import QuantizedModel, quantize
from mnistnet.layers import *  # noqa: F403  (every layer class, mnistnet.layers.__all__)
from mnistnet.model import Model
from mnistnet.optimizers import SGD, Adam, AdamW, RMSprop
from mnistnet.presets import PRESETS, RECIPES, preset
from mnistnet.runtime import (
    configure_from_environment,
    get_include,
    get_library_dir,
    get_num_threads,
    set_num_threads,
    show_config,
    simd_path,
)
from mnistnet.trainer import History

__all__ = [
    *layers.__all__,
    "PRESETS",
    "RECIPES",
    "SGD",
    "Adam",
    "AdamW",
    "History",
    "Model",
    "QuantizedModel",
    "RMSprop",
    "__version__",
    "callbacks",
    "datasets",
    "fast",
    "get_include",
    "get_library_dir",
    "get_num_threads",
    "kinds",
    "layers",
    "load_mnist",
    "losses",
    "preset",
    "quantize",
    "reference",
    "regularizers",
    "schedules",
    "set_num_threads",
    "show_config",
    "simd_path",
]

configure_from_environment()
