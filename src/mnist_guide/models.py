"""The course's CNN for MNIST, described by a plain config so that checkpoints can rebuild it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

NORMS = ("batch", "group", "none")


@dataclass(frozen=True)
class CNNConfig:
    """The shape of `MnistCNN`: channels of the two convolutions, hidden units, dropout, normalisation.

    `norm="group"` swaps BatchNorm for GroupNorm (each sample normalised on its own, so a batch
    split across processes computes the same thing); `"none"` leaves normalisation out.
    """

    conv1_channels: int = 16
    conv2_channels: int = 32
    hidden_units: int = 128
    dropout: float = 0.0
    num_classes: int = 10
    norm: str = "batch"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(4, channels), channels)
    return nn.Identity()


class MnistCNN(nn.Module):
    """Two convolution blocks (conv, norm, ReLU, max-pool) and a two-layer classifier: `[N, 1, 28, 28]` -> `[N, 10]`.

    Taught in notebooks/07_mnist_cnn.ipynb.
    """

    def __init__(self, config: CNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or CNNConfig()
        c1, c2, norm = self.config.conv1_channels, self.config.conv2_channels, self.config.norm
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=5, bias=norm == "none"),  # 28 -> 24
            _norm(norm, c1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 24 -> 12
            nn.Conv2d(c1, c2, kernel_size=3, bias=norm == "none"),  # 12 -> 10
            _norm(norm, c2),
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


#: The model classes a checkpoint may name, with their config types.
MODELS: dict[str, tuple[type[nn.Module], type]] = {"MnistCNN": (MnistCNN, CNNConfig)}


def build_model(config: object | None = None) -> nn.Module:
    """Build a course model from its config object, or from the dict a checkpoint stores (with its `class`).

    Taught in notebooks/07_mnist_cnn.ipynb.
    """
    if isinstance(config, dict):
        values = dict(config)
        model_class, config_class = MODELS[values.pop("class", "MnistCNN")]
        return model_class(config_class(**values))
    for model_class, config_class in MODELS.values():
        if isinstance(config, config_class):
            return model_class(config)
    return MnistCNN(config)


def model_config(model: nn.Module) -> dict:
    """The plain dict a checkpoint stores for `model`: its class name and its config."""
    config = getattr(model, "config", None)
    return {"class": type(model).__name__, **(asdict(config) if config is not None else {})}


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Count the parameters of `model` (by default only those that train).

    Taught in notebooks/07_mnist_cnn.ipynb.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
