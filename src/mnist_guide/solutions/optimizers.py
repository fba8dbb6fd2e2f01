"""Reference solutions for notebooks/05_optimizers.ipynb.

Every update rule has the notebook's signature: `step(w, grad, state, *, lr, ...) -> new w`, where
`state` is a dict the rule keeps its memory in between steps (it starts empty).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def nesterov_step(w: torch.Tensor, grad: torch.Tensor, state: dict, *, lr: float, momentum: float = 0.9) -> torch.Tensor:
    """Exercise 1: SGD with Nesterov momentum, as `torch.optim.SGD(nesterov=True)` computes it.

    b_t = momentum * b_{t-1} + g_t (b_1 = g_1), then w_t = w_{t-1} - lr * (g_t + momentum * b_t):
    the step looks ahead along the velocity instead of following it.
    """
    buffer = state.get("buffer")
    buffer = grad.clone() if buffer is None else momentum * buffer + grad
    state["buffer"] = buffer
    return w - lr * (grad + momentum * buffer)


def adamw_step(
    w: torch.Tensor,
    grad: torch.Tensor,
    state: dict,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> torch.Tensor:
    """Exercise 2: AdamW, as `torch.optim.AdamW` computes it: Adam plus decoupled weight decay.

    The weights shrink by lr * weight_decay * w directly, outside the gradient averages, so the
    decay is not rescaled by Adam's per-coordinate step sizes.
    """
    beta1, beta2 = betas
    t = state["t"] = state.get("t", 0) + 1
    m = state["m"] = beta1 * state.get("m", torch.zeros_like(w)) + (1 - beta1) * grad
    v = state["v"] = beta2 * state.get("v", torch.zeros_like(w)) + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    decayed = w - lr * weight_decay * w
    return decayed - lr * m_hat / (v_hat.sqrt() + eps)


def largest_stable_lr(curvatures: Sequence[float]) -> float:
    """Exercise 3: the learning rate above which gradient descent diverges on a bowl sum_i c_i x_i^2 / 2.

    Each coordinate's error is multiplied by (1 - lr * c_i) per step; it shrinks only while
    |1 - lr * c_i| < 1, that is lr < 2 / c_i. The steepest direction sets the limit: 2 / max c_i.
    """
    if not curvatures or min(curvatures) <= 0:
        raise ValueError(f"curvatures must be positive numbers, got {list(curvatures)}")
    return 2.0 / max(curvatures)
