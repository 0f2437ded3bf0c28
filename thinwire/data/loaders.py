"""Centralised data sets from local files: sklearn digits, MNIST / Fashion-MNIST (IDX), CIFAR-10
(python pickle batches) and user .npz files.

Nothing is ever downloaded. Every missing, unreadable or corrupt file raises `DataError` with one
line naming the file and what was expected, so the CLI can print it instead of a traceback.
Images come out float32 in [0, 1], NCHW; labels int64.
"""
from __future__ import annotations

import gzip
import math
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thinwire.errors import ConfigError, DataError

DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "npz", "mnist1d")


@dataclass
class Dataset:
    """A centralised train/test split; the partitioners cut `x_train`/`y_train` into clients."""

    name: str
    x_train: torch.Tensor  # float32, (N, *input_shape)
    y_train: torch.Tensor  # int64, (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"num_classes={self.num_classes}, input_shape={self.input_shape})")


def load_dataset(name: str, path: str | None = None, *, seed: int = 0, standardize: bool = False) -> Dataset:
    """Load a named data set. `seed` drives the split where the format has none (digits, npz).

    `standardize=True` subtracts the training set's per-channel mean and divides by its std
    (applied to both splits), for models that train better on zero-mean inputs.
    """
    if name == "digits":
        ds = _load_digits(seed)
    elif name in ("mnist", "fashion-mnist"):
        ds = _load_idx_dir(name, _need_path(name, path))
    elif name == "cifar10":
        ds = _load_cifar10(_need_path(name, path))
    elif name == "npz":
        ds = _load_npz(_need_path(name, path), seed)
    elif name == "mnist1d":
        from thinwire.data.mnist1d import generate_mnist1d
        ds = _make("mnist1d", *generate_mnist1d(), num_classes=10)
    else:
        raise ConfigError("dataset", f"unknown data set {name!r}", ", ".join(DATASET_NAMES + ("synthetic", "stdlib-text")))
    if standardize:
        _standardize(ds)
    return ds


def _need_path(name: str, path: str | None) -> Path:
    if not path:
        what = "a .npz file" if name == "npz" else "a directory with the data files"
        raise ConfigError("data_path", f"data set {name} needs a path", what)
    return Path(path)


def _standardize(ds: Dataset) -> None:
    x = ds.x_train
    dims = [0] + list(range(2, x.dim())) if x.dim() > 2 else [0]
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    ds.x_train = (ds.x_train - mean) / std
    ds.x_test = (ds.x_test - mean) / std


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test index split, stratified by label when every class has >= 2 samples.

    Uses sklearn's splitter so the sizes match `train_test_split(test_size=...)` exactly
    (digits: 1437 / 360).
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    counts = np.bincount(y)
    present = counts[counts > 0]
    n_test = math.ceil(test_fraction * len(y))
    ok = present.min() >= 2 and min(n_test, len(y) - n_test) >= len(present)
    stratify = y if ok else None
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(te)


def _make(name: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray,
          num_classes: int | None = None) -> Dataset:
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    xt_t = torch.from_numpy(np.ascontiguousarray(xt, dtype=np.float32))
    y_t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    yt_t = torch.from_numpy(np.ascontiguousarray(yt, dtype=np.int64))
    if num_classes is None:
        num_classes = int(max(y.max(initial=-1), yt.max(initial=-1))) + 1
    return Dataset(name, x_t, y_t, xt_t, yt_t, num_classes, tuple(int(d) for d in x.shape[1:]))


# -- digits -----------------------------------------------------------------------------------
def _load_digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]  # pixel values are 0..16
    y = d.target.astype(np.int64)
    tr, te = _stratified_split(y, 0.2, seed)
    return _make("digits", x[tr], y[tr], x[te], y[te], num_classes=10)


# -- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            return gzip.decompress(raw)
        return raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({_one_line(e)})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped): 2 zero bytes, dtype code, ndim, big-endian dims, data."""
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {buf[:4].hex() or 'empty'}); "
                        "expected 0000 + type code + ndim, e.g. 00000803 for images")
    dtype = np.dtype(_IDX_DTYPES[buf[2]])
    ndim = buf[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(buf) < header:
        raise DataError(f"{path}: truncated IDX header ({len(buf)} bytes, ndim={ndim})")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(buf) - header
    if have != need:
        kind = "truncated" if have < need else "has trailing bytes"
        raise DataError(f"{path}: {kind}: dims {dims} need {need} data bytes, file has {have}")
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path:
    """Locate an IDX file under the usual names (raw or .gz, '-idx' or '.idx', torchvision's raw/)."""
    names = [stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"]
    for d in (directory, directory / "raw", directory / "MNIST" / "raw", directory / "FashionMNIST" / "raw"):
        for n in names:
            if (d / n).is_file():
                return d / n
    raise DataError(f"{directory / stem}[.gz]: file not found (expected the standard IDX files "
                    f"{', '.join(IDX_FILES.values())} in {directory})")


def _load_idx_dir(name: str, directory: Path) -> Dataset:
    if not directory.is_dir():
        raise DataError(f"{directory}: data directory not found (data set {name} needs a directory with "
                        f"the IDX files {', '.join(IDX_FILES.values())}, raw or .gz)")
    arrays: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    for key, stem in IDX_FILES.items():
        paths[key] = _find_idx(directory, stem)
        arrays[key] = read_idx(paths[key])
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3:
            raise DataError(f"{paths[f'x_{split}']}: expected images of shape (N, H, W), got {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{paths[f'y_{split}']}: expected {len(x)} labels to match the images, "
                            f"got shape {y.shape}")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{paths[f'y_{split}']}: labels must be 0..9, found {int(y.min())}..{int(y.max())}")
    scale = 255.0 if arrays["x_train"].dtype == np.uint8 else 1.0
    return _make(name, arrays["x_train"][:, None].astype(np.float32) / scale, arrays["y_train"],
                 arrays["x_test"][:, None].astype(np.float32) / scale, arrays["y_test"], num_classes=10)


# -- CIFAR-10 (python pickle batches) ---------------------------------------------------------
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"

# The official batches are pickled dicts of numpy arrays and lists. Only the classes needed to
# rebuild those may be loaded, so a hostile file cannot run code through the unpickler.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: file not found (CIFAR-10 needs {', '.join(CIFAR_TRAIN)}, {CIFAR_TEST})")
    try:
        with path.open("rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure means a corrupt or foreign file
        raise DataError(f"{path}: not a readable CIFAR-10 python batch ({_one_line(e)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict with 'data' and 'labels', got {type(obj).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: missing 'data' or 'labels' (keys: {', '.join(map(str, d))})")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be 0..9, found {int(labels.min())}..{int(labels.max())}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _load_cifar10(path: Path) -> Dataset:
    directory = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    if not directory.is_dir():
        raise DataError(f"{path}: data directory not found (cifar10 needs the 'cifar-10-batches-py' "
                        "directory or its parent)")
    parts = [_read_cifar_batch(directory / n) for n in CIFAR_TRAIN]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    xt, yt = _read_cifar_batch(directory / CIFAR_TEST)
    return _make("cifar10", x.astype(np.float32) / 255.0, y, xt.astype(np.float32) / 255.0, yt, num_classes=10)


# -- npz --------------------------------------------------------------------------------------
def _npz_images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """Bring user arrays to float32 [0,1] NCHW (images) or (N, D) (feature vectors)."""
    if x.ndim < 2:
        raise DataError(f"{path}: '{key}' must have a sample axis and features, got shape {x.shape}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating):
        x = x.astype(np.float32)
    else:
        raise DataError(f"{path}: '{key}' must be numeric, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: '{key}' contains NaN or infinite values")
    if x.ndim == 3:  # (N, H, W) grey images
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):  # NHWC -> NCHW
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def _npz_labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: '{key}' must be a 1-D array of {n} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError(f"{path}: '{key}' must hold integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if n and y.min() < 0:
        raise DataError(f"{path}: '{key}' has negative labels; labels must be 0..num_classes-1")
    return y


def _load_npz(path: Path, seed: int) -> Dataset:
    if not path.is_file():
        raise DataError(f"{path}: file not found (npz data set needs a .npz with arrays x, y "
                        "and optionally x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zip / format errors, object arrays needing pickle
        raise DataError(f"{path}: not a readable .npz file ({_one_line(e)})") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: needs arrays 'x' and 'y' (found: {', '.join(arrays) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: give both 'x_test' and 'y_test' or neither")
    x = _npz_images(path, "x", arrays["x"])
    y = _npz_labels(path, "y", arrays["y"], len(x))
    if len(x) == 0:
        raise DataError(f"{path}: 'x' holds no samples")
    if "x_test" in arrays:
        xt = _npz_images(path, "x_test", arrays["x_test"])
        yt = _npz_labels(path, "y_test", arrays["y_test"], len(xt))
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: 'x_test' samples have shape {xt.shape[1:]}, 'x' has {x.shape[1:]}")
    else:
        if len(x) < 2:
            raise DataError(f"{path}: needs at least 2 samples to split into train and test")
        tr, te = _stratified_split(y, 0.2, seed)
        x, xt, y, yt = x[tr], x[te], y[tr], y[te]
    return _make("npz", x, y, xt, yt)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
