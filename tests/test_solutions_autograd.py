"""The reference solutions of notebooks/02_autograd.ipynb agree with autograd."""

from __future__ import annotations

import pytest
import torch

from mnist_guide.solutions import autograd


def test_derivative_of_known_functions():
    xs = torch.linspace(-3, 3, 13)
    assert torch.allclose(autograd.derivative(torch.exp, xs), torch.exp(xs))
    slopes = autograd.derivative(torch.tanh, xs)
    assert torch.allclose(slopes, 1 - torch.tanh(xs) ** 2, atol=1e-6)
    assert not slopes.requires_grad and not xs.requires_grad


def test_logistic_gradient_equals_autograd():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = (torch.rand(20, generator=g) > 0.5).double()
    w = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y)
    (expected,) = torch.autograd.grad(loss, w)
    assert torch.allclose(autograd.logistic_gradient(X, y, w.detach()), expected, atol=1e-12)


def test_gradient_descent_step_updates_in_place_and_clears():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    (3 * w).sum().backward()
    autograd.gradient_descent_step([w], learning_rate=0.5)
    assert w.is_leaf and w.requires_grad and w.grad is None
    assert torch.equal(w.detach(), torch.tensor([-0.5, -3.5]))


def test_gradient_descent_step_without_gradient_says_so():
    w = torch.tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match="backward"):
        autograd.gradient_descent_step([w], learning_rate=0.1)
