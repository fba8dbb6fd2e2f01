"""Reference solutions for notebooks/02_autograd.ipynb."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def derivative(f: Callable[[torch.Tensor], torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
    """Exercise 1: the derivative of an element-wise `f` at every point of `xs`, by autograd."""
    points = xs.detach().clone().requires_grad_()
    f(points).sum().backward()  # each output depends only on its own input
    return points.grad.detach()


def logistic_gradient(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exercise 2: the gradient of the mean binary cross-entropy of `sigmoid(X @ w)`, by the chain rule."""
    p = torch.sigmoid(X @ w)
    return X.T @ (p - y) / X.shape[0]


def gradient_descent_step(parameters: Iterable[torch.Tensor], learning_rate: float) -> None:
    """Exercise 3: move each parameter against its gradient, in place, then clear the gradient."""
    with torch.no_grad():
        for parameter in parameters:
            if parameter.grad is None:
                raise ValueError("a parameter has no gradient: call loss.backward() before the step")
            parameter -= learning_rate * parameter.grad
            parameter.grad = None
