"""MNIST-1D (Greydanus & Steinbach): ten 1-D digit templates turned into 40-sample signals by
padding, shear, scaling, translation, correlated and i.i.d. noise. Harder than sklearn's 8x8 digits
(a linear model reaches about 0.32 and an MLP about 0.68 on it, CNNs 0.9+), and generated locally:
this calls the `mnist1d` package's generating function `make_dataset` with its published settings
(5,000 samples, seed 42, 4,000 train / 1,000 test), never `get_dataset`, whose default path
downloads a pickle. The run's seed drives only the partition, so every seed sees the same data.
"""
from __future__ import annotations

import functools
import random

import numpy as np

from thinwire.errors import DataError

NUM_SAMPLES = 5000


def generate_mnist1d(num_samples: int = NUM_SAMPLES) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, x_test, y_test): float (N, 40) signals and labels 0..9 (fresh copies of a per-process cache)."""
    return tuple(a.copy() for a in _generate(int(num_samples)))  # type: ignore[return-value]


@functools.lru_cache(maxsize=2)
def _generate(num_samples: int) -> tuple[np.ndarray, ...]:
    try:
        from mnist1d.data import get_dataset_args
        from mnist1d.data import make_dataset as generate
    except ImportError as e:
        raise DataError(f"mnist1d: the generator package is missing ({e}); pip install mnist1d==0.0.2.post1") from None
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    # make_dataset seeds the global `random` and numpy RNGs with its own seed; keep the caller's streams.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = generate(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return tuple(np.ascontiguousarray(d[k]) for k in ("x", "y", "x_test", "y_test"))

