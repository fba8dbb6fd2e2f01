"""Reference solutions for notebooks/03_modules.ipynb."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


def count_mlp_parameters(sizes: Sequence[int]) -> int:
    """Exercise 1: the parameters of an MLP whose layers have widths `sizes` (each `nn.Linear` has a bias).

    `[2, 32, 32, 2]` has three layers: 2 × 32 + 32, 32 × 32 + 32 and 32 × 2 + 2 numbers.
    """
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in itertools.pairwise(sizes))


class Standardize(nn.Module):
    """Exercise 2: `(x - mean) / std` with `mean` and `std` kept as buffers: saved and moved, never trained."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def make_mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Exercise 3: `nn.Linear` layers of widths `sizes`, an `activation` between them and none after the last."""
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output width, got sizes={list(sizes)}")
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        if index > 0:
            layers.append(activation())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)
