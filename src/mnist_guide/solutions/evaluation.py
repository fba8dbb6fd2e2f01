"""Reference solutions for notebooks/08_evaluation.ipynb."""

from __future__ import annotations

import torch


def weighted_f1(f1_per_class: torch.Tensor, support: torch.Tensor) -> float:
    """Exercise 1: the per-class F1 scores averaged with each class's share of the samples as weight."""
    weights = support.double() / support.sum()
    return float((f1_per_class.double() * weights).sum())


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Exercise 2: the fraction of samples whose true class is among the `k` largest logits."""
    top = logits.topk(k, dim=1).indices
    return float((top == labels.unsqueeze(1)).any(dim=1).double().mean())


def selective_accuracy(probabilities: torch.Tensor, labels: torch.Tensor, threshold: float) -> tuple[float, float]:
    """Exercise 3: answer only when the top probability reaches `threshold`; return (coverage, accuracy on those)."""
    confidence, predicted = probabilities.max(dim=1)
    kept = confidence >= threshold
    coverage = float(kept.double().mean())
    accuracy = float((predicted[kept] == labels[kept]).double().mean()) if kept.any() else float("nan")
    return coverage, accuracy
