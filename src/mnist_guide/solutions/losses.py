"""Reference solutions for notebooks/04_loss_functions.ipynb."""

from __future__ import annotations

import math

import torch


def uniform_guess_loss(num_classes: int) -> float:
    """Exercise 1: the cross-entropy of a classifier that gives every class the same logit.

    Equal logits give every class probability 1 / K, so the loss is -log(1 / K) = log K,
    whatever the right class is: the loss an untrained classifier starts near.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, not {num_classes}")
    return math.log(num_classes)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Exercise 2: cross-entropy against a probability distribution per example, averaged over the batch.

    H(q, p) = -sum_k q_k log p_k with p = softmax(logits); log_softmax keeps it finite for any logits.
    """
    if logits.shape != target_probs.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target_probs {tuple(target_probs.shape)} must have the same shape")
    return -(target_probs * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def huber_loss(predictions: torch.Tensor, targets: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Exercise 3: the Huber loss, squared for errors up to `delta` and linear beyond, averaged.

    0.5 e^2 when |e| <= delta, delta (|e| - delta / 2) otherwise: the two pieces meet with the same
    value and slope at |e| = delta, so large errors pull with a constant force instead of a growing one.
    """
    if delta <= 0:
        raise ValueError(f"delta must be positive, not {delta}")
    error = (predictions - targets).abs()
    quadratic = 0.5 * error**2
    linear = delta * (error - 0.5 * delta)
    return torch.where(error <= delta, quadratic, linear).mean()
