"""The small classic models: MLP, multinomial logistic regression and LeNet-5 (sized from the input)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from thinwire.errors import ConfigError


def _flat_dim(input_shape: tuple[int, ...]) -> int:
    n = 1
    for d in input_shape:
        n *= int(d)
    return n


class MLP(nn.Sequential):
    """flatten -> (Linear, ReLU) per hidden size -> Linear."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (64, 64)):
        layers: list[nn.Module] = [nn.Flatten()]
        width = _flat_dim(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class LogReg(nn.Sequential):
    """Multinomial logistic regression: flatten -> Linear (softmax lives in the loss)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__(nn.Flatten(), nn.Linear(_flat_dim(input_shape), num_classes))


class LeNet(nn.Module):
    """LeNet-5 style CNN whose convolution and pooling sizes follow the image size.

    conv5x5 (same padding, 6 maps) -> ReLU -> maxpool2 -> conv (16 maps) -> ReLU -> maxpool2
    -> 120 -> 84 -> classes. The second convolution is the classic valid 5x5 when the feature map
    is at least 10 pixels (28x28 MNIST: 28->14->10->5; 32x32 CIFAR: 32->16->12->6) and a same-padded
    3x3 for small inputs (8x8 digits: 8->4->4->2), so one definition serves all data sets.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError("model", f"lenet needs image input (channels, height, width), got shape "
                              f"{tuple(input_shape)}", "mlp or logreg for flat features")
        c, h, w = (int(d) for d in input_shape)
        self.input_shape = (c, h, w)
        if h < 4 or w < 4:
            raise ConfigError("model", f"lenet needs images of at least 4x4 pixels, got {h}x{w}", "mlp, logreg")
        h, w = h // 2, w // 2
        if min(h, w) >= 10:
            k2, p2 = 5, 0
        else:
            k2, p2 = 3, 1
        h, w = h + 2 * p2 - k2 + 1, w + 2 * p2 - k2 + 1
        h, w = h // 2, w // 2
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, k2, padding=p2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * h * w, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # flattened images, e.g. from a generic data path
            x = x.view(x.shape[0], *self.input_shape)
        return self.classifier(self.features(x))
