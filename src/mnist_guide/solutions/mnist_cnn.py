"""Reference solutions for notebooks/07_mnist_cnn.ipynb."""

from __future__ import annotations

import torch
from torch import nn


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Exercise 1: the height (or width) a convolution or pooling layer gives for an input of `size`."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_parameters(in_channels: int, out_channels: int, kernel: int, bias: bool = True) -> int:
    """Exercise 2: how many numbers a `Conv2d` learns: one `kernel × kernel` filter per input and output channel."""
    return out_channels * in_channels * kernel * kernel + (out_channels if bias else 0)


@torch.no_grad()
def predict_digit(model: nn.Module, image: torch.Tensor) -> int:
    """Exercise 3: the digit `model` reads in one normalised `[1, 28, 28]` image."""
    model.eval()
    parameter = next(model.parameters())
    logits = model(image.unsqueeze(0).to(parameter.device, parameter.dtype))
    return int(logits.argmax(dim=1).item())
