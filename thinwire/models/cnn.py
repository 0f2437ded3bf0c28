"""The CNN of the FedAvg paper (McMahan et al., AISTATS 2017): two 5x5 convolutions with 32 and 64
maps, each followed by ReLU and 2x2 max pooling, a 512-unit fully connected layer with ReLU, and a
linear output (softmax lives in the loss).

Convolutions are 'same'-padded, which reproduces the paper's count on 28x28 MNIST exactly:
1,663,370 parameters. The fully connected layer dominates and follows the input: 3x32x32 images
give 2.16M, 40-sample MNIST-1D signals (1-D kernels of 25 taps) 0.39M.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from thinwire.models.layers import as_batch, conv, conv_geometry, max_pool


class FedAvgCNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.dims, self.channels, self.spatial = conv_geometry("fedavg-cnn", input_shape)
        d = self.dims
        self.features = nn.Sequential(
            conv(d, self.channels, 32, 5, bias=True), nn.ReLU(), max_pool(d),
            conv(d, 32, 64, 5, bias=True), nn.ReLU(), max_pool(d),
        )
        flat = 64 * math.prod(s // 2 // 2 for s in self.spatial)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 512), nn.ReLU(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_batch(x, self.dims, self.channels, self.spatial)
        return self.classifier(self.features(x))
