"""Reference CNNs that ship with edgecnn.

Channel counts are multiples of 8 (what int8 SIMD kernels and `round_to=8` pruning want).
"""
from __future__ import annotations

from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SimpleCNN(nn.Module):
    """conv-pool-conv-pool-dense: the smallest model that learns MNIST well."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, dropout: float = 0.1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)   # any input size >= 4 px works; 28 px MNIST: 7 -> 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(2 * width * 16, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


class BNCNN(nn.Module):
    """A deeper CNN with batch norm: three stages of two 3x3 conv-BN-ReLU, global pooling, dense."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, dropout: float = 0.1):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w), _conv_bn(w, w), nn.MaxPool2d(2),
            _conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w), _conv_bn(4 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


BUILTIN = {"simple_cnn": SimpleCNN, "bn_cnn": BNCNN}
