"""The course's CNN for MNIST, described by a plain config so checkpoints can rebuild it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    """The shape of `MnistCNN`: channels of the two convolutions, hidden units, dropout."""

    conv1_channels: int = 16
    conv2_channels: int = 32
    hidden_units: int = 128
    dropout: float = 0.0
    num_classes: int = 10


class MnistCNN(nn.Module):
    """Two convolution blocks (conv, BatchNorm, ReLU, max-pool) and a two-layer classifier.

    `[N, 1, 28, 28]` normalised pixels in, `[N, 10]` logits out. About 110k parameters with the
    default config: small enough to train to 99.4 % on a laptop CPU in under a minute.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """

    def __init__(self, config: CNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or CNNConfig()
        c1, c2 = self.config.conv1_channels, self.config.conv2_channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=5, bias=False),  # 28 -> 24
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 24 -> 12
            nn.Conv2d(c1, c2, kernel_size=3, bias=False),  # 12 -> 10
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 10 -> 5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 5 * 5, self.config.hidden_units),
            nn.ReLU(inplace=True),
            nn.Dropout(self.config.dropout),
            nn.Linear(self.config.hidden_units, self.config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(config: CNNConfig | dict | None = None) -> MnistCNN:
    """Build the course CNN from a `CNNConfig` or the dict a checkpoint stores.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    if isinstance(config, dict):
        config = CNNConfig(**config)
    return MnistCNN(config)


def model_config(model: nn.Module) -> dict:
    """Return the plain-dict config a checkpoint stores for `model` (its class and its shape).

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    config = getattr(model, "config", None)
    return {"class": type(model).__name__, **(asdict(config) if config is not None else {})}


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Count the parameters of `model` (by default only those that train).

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class GroupNormCNN(MnistCNN):
    """The course CNN with GroupNorm in place of BatchNorm: every sample is normalised on its own.

    BatchNorm mixes the samples of a batch (it normalises with the batch's mean and variance), so
    a batch split across processes or micro-batches computes something else than the whole batch.
    GroupNorm keeps the same layers and parameters without that coupling: the gradient of a batch
    is the mean of per-sample gradients however the batch is split.

    Taught in notebooks/10_scaling_out.ipynb.
    """

    def __init__(self, config: CNNConfig | None = None, groups: int = 4) -> None:
        super().__init__(config)
        for index in (1, 5):  # the two BatchNorm2d layers of `features`
            channels = self.features[index].num_features
            self.features[index] = nn.GroupNorm(math.gcd(groups, channels), channels)
