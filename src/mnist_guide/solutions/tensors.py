"""Reference solutions for notebooks/01_tensors.ipynb."""

from __future__ import annotations

import torch


def to_unit_floats(images: torch.Tensor) -> torch.Tensor:
    """Exercise 1: `uint8` images `[N, 28, 28]` in 0..255 -> `float32` rows `[N, 784]` in [0, 1]."""
    # reshape, not view: a transposed or sliced batch is not contiguous and view would refuse it.
    return images.reshape(images.shape[0], -1).to(torch.float32) / 255


def pairwise_sq_distances(points_a: torch.Tensor, points_b: torch.Tensor) -> torch.Tensor:
    """Exercise 2: squared Euclidean distances `[n, m]` between the rows of `[n, d]` and `[m, d]`."""
    differences = points_a[:, None, :] - points_b[None, :, :]  # (n, 1, d) - (1, m, d) -> (n, m, d)
    return (differences**2).sum(dim=-1)


def standardize_columns(x: torch.Tensor) -> torch.Tensor:
    """Exercise 3: each column of a 2-D tensor shifted to mean 0 and scaled to standard deviation 1."""
    return (x - x.mean(dim=0, keepdim=True)) / x.std(dim=0, keepdim=True)
