"""The reference solutions of notebooks/08_evaluation.ipynb agree with torchmetrics."""

import math

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from mnist_guide.evaluation import confusion_matrix
from mnist_guide.solutions import evaluation


def unbalanced_logits(seed: int = 0, samples: int = 500, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are right more often than chance, over classes of very different sizes."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]), samples, replacement=True, generator=generator)
    logits = torch.randn(samples, classes, generator=generator)
    logits[torch.arange(samples), labels] += 1.5
    return logits, labels


def test_weighted_f1_matches_torchmetrics():
    logits, labels = unbalanced_logits()
    predicted = logits.argmax(dim=1)
    per_class = MulticlassF1Score(num_classes=5, average=None)(predicted, labels)
    support = confusion_matrix(predicted, labels, num_classes=5).sum(dim=1)
    expected = MulticlassF1Score(num_classes=5, average="weighted")(predicted, labels)
    assert math.isclose(evaluation.weighted_f1(per_class, support), float(expected), abs_tol=1e-6)
    macro = float(MulticlassF1Score(num_classes=5, average="macro")(predicted, labels))
    assert not math.isclose(evaluation.weighted_f1(per_class, support), macro, abs_tol=1e-3), "unbalanced: weighted != macro"


def test_top_k_accuracy_matches_torchmetrics_and_grows_with_k():
    logits, labels = unbalanced_logits(seed=1)
    scores = [evaluation.top_k_accuracy(logits, labels, k) for k in (1, 2, 3, 5)]
    for k, score in zip((1, 2, 3), scores, strict=False):
        expected = MulticlassAccuracy(num_classes=5, top_k=k, average="micro")(logits, labels)
        assert math.isclose(score, float(expected), abs_tol=1e-6)
    assert scores == sorted(scores) and scores[-1] == 1.0


def test_selective_accuracy_counts_only_the_confident_predictions():
    logits, labels = unbalanced_logits(seed=2)
    probabilities = logits.softmax(dim=1)
    coverage, accuracy = evaluation.selective_accuracy(probabilities, labels, 0.6)
    kept = probabilities.max(dim=1).values >= 0.6
    assert math.isclose(coverage, kept.sum().item() / len(labels))
    expected = MulticlassAccuracy(num_classes=5, average="micro")(logits[kept], labels[kept])
    assert math.isclose(accuracy, float(expected), abs_tol=1e-6)
    assert evaluation.selective_accuracy(probabilities, labels, 0.0) == (1.0, evaluation.top_k_accuracy(logits, labels, 1))


def test_selective_accuracy_keeping_nothing_has_no_accuracy():
    logits, labels = unbalanced_logits(seed=3)
    coverage, accuracy = evaluation.selective_accuracy(logits.softmax(dim=1), labels, 1.01)
    assert coverage == 0.0 and math.isnan(accuracy)
