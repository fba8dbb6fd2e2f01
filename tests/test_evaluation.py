"""mnist_guide.evaluation: metrics equal hand counts, the confusion matrix, mistakes, the report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_guide.data import TensorLoader
from mnist_guide.evaluation import (
    ConfusedPair,
    Predictions,
    classification_metrics,
    classification_report,
    confident_mistakes,
    confusion_matrix,
    format_report,
    most_confused_pairs,
    predict,
)

# Rows: true class, columns: predicted. Chosen so that precision and recall differ per class.
MATRIX = torch.tensor([[3, 1, 0], [0, 2, 0], [2, 1, 3]])
# TP = [3, 2, 3]; FP (column minus diagonal) = [2, 2, 0]; FN (row minus diagonal) = [1, 0, 3].
PRECISION = torch.tensor([3 / 5, 2 / 4, 3 / 3])
RECALL = torch.tensor([3 / 4, 2 / 2, 3 / 6])
F1 = 2 * PRECISION * RECALL / (PRECISION + RECALL)


def samples_from_matrix(matrix: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and predictions (shuffled) whose confusion matrix is `matrix`."""
    labels, predicted = [], []
    for true, row in enumerate(matrix.tolist()):
        for guess, count in enumerate(row):
            labels += [true] * count
            predicted += [guess] * count
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return torch.tensor(labels)[order], torch.tensor(predicted)[order]


def logits_for(predicted: torch.Tensor, num_classes: int, margin: torch.Tensor | float = 3.0) -> torch.Tensor:
    """Logits whose argmax is `predicted`."""
    return nn.functional.one_hot(predicted, num_classes).float() * torch.as_tensor(margin).reshape(-1, 1)


def test_metrics_updated_batch_by_batch_equal_hand_counts():
    labels, predicted = samples_from_matrix(MATRIX)
    logits = logits_for(predicted, 3)
    metrics = classification_metrics(num_classes=3)
    for logit_batch, label_batch in zip(logits.split(5), labels.split(5), strict=True):  # 5 + 5 + 2: ragged
        metrics.update(logit_batch, label_batch)
    values = metrics.compute()

    assert torch.equal(values["confusion_matrix"], MATRIX)
    assert torch.allclose(values["precision_per_class"], PRECISION)
    assert torch.allclose(values["recall_per_class"], RECALL)
    assert torch.allclose(values["f1_per_class"], F1)
    assert values["precision_macro"].item() == pytest.approx(PRECISION.mean().item())
    assert values["recall_macro"].item() == pytest.approx(RECALL.mean().item())
    assert values["f1_macro"].item() == pytest.approx(F1.mean().item())
    assert values["accuracy_macro"].item() == pytest.approx(RECALL.mean().item())  # per-class accuracy is recall
    accuracy = 8 / 12
    for name in ("accuracy_micro", "precision_micro", "recall_micro", "f1_micro"):
        assert values[name].item() == pytest.approx(accuracy), name  # one number for single-label classes


def test_every_metric_names_its_average():
    metrics = classification_metrics(num_classes=3)
    averages = {name: getattr(metric, "average", "n/a") for name, metric in metrics.items()}
    assert averages["accuracy_micro"] == "micro" and averages["accuracy_macro"] == "macro"
    assert all(averages[f"{family}_per_class"] in (None, "none") for family in ("precision", "recall", "f1"))


def test_predict_collects_logits_labels_and_updates_metrics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    images, labels = torch.randn(23, 1, 4, 4), torch.randint(0, 4, (23,))
    metrics = classification_metrics(num_classes=4)
    predictions = predict(model, TensorLoader(images, labels, batch_size=5), metrics=metrics)

    assert isinstance(predictions, Predictions) and len(predictions) == 23
    with torch.no_grad():
        expected = model(images)
    assert torch.allclose(predictions.logits, expected)
    assert torch.equal(predictions.labels, labels)
    assert torch.equal(predictions.predicted, expected.argmax(dim=1))
    assert torch.allclose(predictions.probabilities.sum(dim=1), torch.ones(23))
    assert torch.equal(metrics.compute()["confusion_matrix"], confusion_matrix(predictions.predicted, labels, num_classes=4))
    assert not model.training


def test_confusion_matrix_shape_sum_and_orientation():
    labels, predicted = samples_from_matrix(MATRIX)
    matrix = confusion_matrix(predicted, labels, num_classes=3)
    assert matrix.shape == (3, 3) and int(matrix.sum()) == len(labels)
    assert torch.equal(matrix, MATRIX)  # rows are the true classes
    assert torch.equal(matrix.sum(dim=1), torch.bincount(labels, minlength=3))


def test_most_confused_pairs_largest_first_ties_by_class_and_no_zeros():
    pairs = most_confused_pairs(MATRIX, k=10)
    assert pairs == [ConfusedPair(2, 0, 2), ConfusedPair(0, 1, 1), ConfusedPair(2, 1, 1)]
    assert most_confused_pairs(MATRIX, k=1) == [ConfusedPair(2, 0, 2)]
    assert most_confused_pairs(torch.eye(3, dtype=torch.long) * 5) == []


def test_confident_mistakes_sorted_and_all_wrong():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    predicted = torch.tensor([0, 2, 2, 1, 0, 2])  # mistakes at 1, 3, 4
    margins = torch.tensor([1.0, 2.0, 1.0, 6.0, 4.0, 1.0])
    predictions = Predictions(logits_for(predicted, 3, margins), labels)
    worst = confident_mistakes(predictions, k=2)
    assert worst.index.tolist() == [3, 4]
    assert worst.labels.tolist() == [0, 1] and worst.predicted.tolist() == [1, 0]
    assert bool((worst.confidence[:-1] >= worst.confidence[1:]).all())
    everything = confident_mistakes(predictions, k=10)
    assert everything.index.tolist() == [3, 4, 1] and len(everything) == 3


def test_classification_report_keys_and_per_class_rows():
    labels, predicted = samples_from_matrix(MATRIX)
    metrics = classification_metrics(num_classes=3)
    metrics.update(logits_for(predicted, 3), labels)
    report = classification_report(metrics.compute(), class_names=("a", "b", "c"))

    assert {"accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class", "confusion_matrix"} <= set(report)
    assert report["accuracy"] == pytest.approx(8 / 12, abs=1e-6)
    assert report["precision_macro"] == pytest.approx(PRECISION.mean().item(), abs=1e-6)
    assert report["confusion_matrix"] == MATRIX.tolist() and report["samples"] == 12
    assert [row["class"] for row in report["per_class"]] == ["a", "b", "c"]
    assert [row["support"] for row in report["per_class"]] == [4, 2, 6]
    assert [row["correct"] for row in report["per_class"]] == [3, 2, 3]
    assert [row["recall"] for row in report["per_class"]] == pytest.approx(RECALL.tolist(), abs=1e-6)
    text = format_report(report)
    assert "accuracy  66.67%" in text and "(8 of 12 correct, 4 mistakes)" in text
    assert "confusion matrix" in text


def test_plot_confusion_matrix_counts_and_shares():
    import matplotlib.pyplot as plt

    from mnist_guide.plotting import plot_confusion_matrix

    figure = plot_confusion_matrix(MATRIX)
    assert "counts" in figure.axes[0].get_title()
    shares = plot_confusion_matrix(MATRIX, normalize=True)
    assert "%" in shares.axes[0].get_title()
    assert [text.get_text() for text in shares.axes[0].texts][:2] == ["75.0", "25.0"], "row 0: 3 and 1 of 4"
    plt.close("all")
