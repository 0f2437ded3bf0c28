"""What the convolutional zoo models share: reading the input shape as a 1-D signal or a 2-D image,
convolutions of either kind with the same number of weights, and the normalisation choice.

A k x k kernel becomes a 1-D kernel of k*k taps, so a network has the same parameter count d on
MNIST-1D signals as on 32x32 images (resnet20 is 0.27M either way) and benchmarks at a stated d
can use either kind of data.
"""
from __future__ import annotations

from torch import nn

from thinwire.errors import ConfigError

NORMS = ("group", "batch")


def conv_geometry(name: str, input_shape: tuple[int, ...], min_size: int = 4) -> tuple[int, int, tuple[int, ...]]:
    """(dims, in_channels, spatial size) of an input: (L,) and (C, L) are 1-D signals, (C, H, W) images."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 1:
        dims, channels, spatial = 1, 1, shape
    elif len(shape) == 2:
        dims, channels, spatial = 1, shape[0], shape[1:]
    elif len(shape) == 3:
        dims, channels, spatial = 2, shape[0], shape[1:]
    else:
        raise ConfigError("model", f"{name} needs a 1-D signal (L,) / (C, L) or an image (C, H, W), got shape {shape}",
                          "mlp for other shapes")
    if min(spatial) < min_size:
        raise ConfigError("model", f"{name} needs inputs of at least {min_size} samples per axis, got {shape}",
                          "mlp, logreg")
    return dims, channels, spatial


def conv(dims: int, cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> nn.Module:
    """A 'same'-padded k x k convolution, or its 1-D form with k*k taps (the same weight count)."""
    if dims == 1:
        taps = k * k
        return nn.Conv1d(cin, cout, taps, stride=stride, padding=taps // 2, bias=bias)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


def max_pool(dims: int, k: int = 2) -> nn.Module:
    return nn.MaxPool1d(k) if dims == 1 else nn.MaxPool2d(k)


def avg_pool_flat(dims: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1), nn.Flatten())


def norm_layer(kind: str, dims: int, channels: int) -> nn.Module:
    """GroupNorm (min(32, C/4) groups: no running statistics, nothing batch-dependent to average
    across non-IID clients) or BatchNorm (the centralised-training default)."""
    if kind == "group":
        return nn.GroupNorm(max(1, min(32, channels // 4)), channels)
    if kind == "batch":
        return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)
    raise ConfigError("norm", f"unknown normalisation {kind!r}", ", ".join(NORMS))


def as_batch(x, dims: int, channels: int, spatial: tuple[int, ...]):
    """Give flattened or channel-less inputs their (N, C, *spatial) shape."""
    if x.dim() == 1 + len(spatial) + 1:
        return x
    return x.reshape(x.shape[0], channels, *spatial)
