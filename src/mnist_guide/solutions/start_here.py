"""Reference solutions for notebooks/00_start_here.ipynb."""

from __future__ import annotations

import torch


def count_label(labels: torch.Tensor, digit: int) -> int:
    """Exercise 1: how many images carry the label `digit`."""
    return int((labels == digit).sum())


def background_fraction(image: torch.Tensor) -> float:
    """Exercise 2: the fraction of an image's pixels that are exactly 0 (pure background)."""
    return float((image == 0).float().mean())
