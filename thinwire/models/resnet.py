"""CIFAR-style residual networks (He et al., 2016): resnet20, the usual FL baseline (3 stages of 3
basic blocks, 16/32/64 channels, parameter-free "option A" shortcuts: 0.27M parameters), and
resnet18 as trained on CIFAR (3x3 stem, no max-pool, 4 stages of 2 blocks, 64..512 channels,
1x1 projection shortcuts: 11.2M parameters).

`norm="group"` (the zoo's default, names "resnet20"/"resnet18") uses GroupNorm; `norm="batch"`
("resnet20-bn"/"resnet18-bn") the original BatchNorm. Why GroupNorm: under non-IID FedAvg each
client's batch statistics describe its own label mix, and the running mean/variance buffers that
FedAvg averages describe none of them, so BatchNorm networks lose accuracy or diverge (Hsieh et al.,
ICML 2020, "The Non-IID Data Quagmire"); GroupNorm normalises per sample, has no buffers, and
makes the flat model vector exactly the d trainable parameters.

Initialisation: Kaiming (fan-out) convolutions and a zero scale on each block's last norm, so
every residual block starts as the identity; without it resnet18 overshoots at the usual client
learning rates in its first steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from thinwire.models.layers import as_batch, avg_pool_flat, conv, conv_geometry, norm_layer


class BasicBlock(nn.Module):
    def __init__(self, dims: int, cin: int, cout: int, stride: int, norm: str, shortcut: str):
        super().__init__()
        self.dims, self.pad = dims, cout - cin
        self.conv1 = conv(dims, cin, cout, 3, stride)
        self.n1 = norm_layer(norm, dims, cout)
        self.conv2 = conv(dims, cout, cout, 3)
        self.n2 = norm_layer(norm, dims, cout)
        self.stride = stride
        self.project: nn.Module | None = None
        if shortcut == "B" and (stride != 1 or cin != cout):
            self.project = nn.Sequential(conv(dims, cin, cout, 1, stride), norm_layer(norm, dims, cout))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.project is not None:
            return self.project(x)
        if self.stride != 1:  # option A: subsample, then zero-pad the new channels
            x = x[:, :, ::self.stride] if self.dims == 1 else x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            x = F.pad(x, (0, 0) * self.dims + (self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.n1(self.conv1(x)))
        out = self.n2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, name: str, input_shape: tuple[int, ...], num_classes: int, blocks: tuple[int, ...],
                 widths: tuple[int, ...], shortcut: str, norm: str = "group"):
        super().__init__()
        self.dims, self.channels, self.spatial = conv_geometry(name, input_shape)
        dims = self.dims
        layers: list[nn.Module] = [conv(dims, self.channels, widths[0], 3), norm_layer(norm, dims, widths[0]),
                                   nn.ReLU()]
        cin = widths[0]
        for stage, (n, w) in enumerate(zip(blocks, widths)):
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(dims, cin, w, stride, norm, shortcut))
                cin = w
        self.features = nn.Sequential(*layers)
        self.pool = avg_pool_flat(dims)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in self.features:
            if isinstance(block, BasicBlock):  # each block starts as the identity (Goyal et al., 2017)
                nn.init.zeros_(block.n2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_batch(x, self.dims, self.channels, self.spatial)
        return self.fc(self.pool(self.features(x)))


def resnet20(input_shape: tuple[int, ...], num_classes: int, norm: str = "group") -> ResNet:
    return ResNet("resnet20", input_shape, num_classes, (3, 3, 3), (16, 32, 64), "A", norm)


def resnet18(input_shape: tuple[int, ...], num_classes: int, norm: str = "group") -> ResNet:
    return ResNet("resnet18", input_shape, num_classes, (2, 2, 2, 2), (64, 128, 256, 512), "B", norm)
