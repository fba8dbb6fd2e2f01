"""Reference solutions for notebooks/10_pytorch2_performance.ipynb."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def graph_breaks(fn: Callable, *args) -> int:
    """Exercise 1: how many times Dynamo has to break the graph of `fn` when it is called on `args`."""
    return torch._dynamo.explain(fn)(*args).graph_break_count


def quantize_rows(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 2: symmetric per-row quantisation to `bits` bits: integers in [-(2^(bits-1) - 1), 2^(bits-1) - 1].

    Returns the integers (as int8) and one scale per row, so that `weight ≈ q * scale`.
    """
    top = 2 ** (bits - 1) - 1
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1, keepdim=True) / top).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(weight / scale).clamp(-top, top).to(torch.int8)
    return q, scale


def weight_sparsity(model: nn.Module) -> float:
    """Exercise 3: the fraction of the convolution and Linear weights that are exactly zero."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    return zeros / total
