"""How good is a trained classifier, and where does it fail: predictions, torchmetrics, confusion matrix, mistakes.

Everything that counts goes through torchmetrics, with `average=` always spelled out (its default is "macro").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.functional.classification import multiclass_confusion_matrix

from mnist_guide.checkpoint import load_checkpoint
from mnist_guide.data import CLASSES, TensorLoader, mnist_tensors
from mnist_guide.runtime import pick_device


@dataclass
class Predictions:
    """A model's outputs over a data set, on the CPU: logits `[N, C]` and true labels `[N]`."""

    logits: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits: each row sums to 1."""
        return self.logits.softmax(dim=1)

    @property
    def predicted(self) -> torch.Tensor:
        """The class with the largest logit, per sample."""
        return self.logits.argmax(dim=1)

    @property
    def confidence(self) -> torch.Tensor:
        """The probability the model gives its own prediction, per sample."""
        return self.probabilities.max(dim=1).values


def classification_metrics(num_classes: int = len(CLASSES)) -> MetricCollection:
    """Accuracy, precision, recall and F1 (micro, macro and per class) and the confusion matrix, as one collection."""
    metrics: dict[str, nn.Module] = {}
    families = {
        "accuracy": MulticlassAccuracy,
        "precision": MulticlassPrecision,
        "recall": MulticlassRecall,
        "f1": MulticlassF1Score,
    }
    for name, family in families.items():
        metrics[f"{name}_micro"] = family(num_classes=num_classes, average="micro")
        metrics[f"{name}_macro"] = family(num_classes=num_classes, average="macro")
        if name != "accuracy":  # per-class accuracy is per-class recall
            metrics[f"{name}_per_class"] = family(num_classes=num_classes, average=None)
    metrics["confusion_matrix"] = MulticlassConfusionMatrix(num_classes=num_classes)
    return MetricCollection(metrics)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, *, metrics: MetricCollection | None = None) -> Predictions:
    """Run `model` in eval mode (on its device) over every batch of `loader`; returns logits and labels on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    if metrics is not None:
        metrics.to(device)
    all_logits, all_labels = [], []
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        if metrics is not None:
            metrics.update(logits, labels)
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
    return Predictions(torch.cat(all_logits), torch.cat(all_labels))


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, *, num_classes: int = len(CLASSES)) -> torch.Tensor:
    """Count `[true class, predicted class]` pairs with torchmetrics; rows are true classes."""
    return multiclass_confusion_matrix(predicted, labels, num_classes=num_classes)


@dataclass(frozen=True)
class ConfusedPair:
    """One off-diagonal cell of a confusion matrix: how often class `true` was taken for `predicted`."""

    true: int
    predicted: int
    count: int


def most_confused_pairs(matrix: torch.Tensor, k: int = 5) -> list[ConfusedPair]:
    """The `k` largest off-diagonal counts of a confusion matrix, largest first (ties: by true, then predicted)."""
    counts = matrix.to("cpu", torch.int64, copy=True)
    counts.fill_diagonal_(0)  # the mistakes only
    flat = counts.flatten()
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    size = len(counts)
    return [ConfusedPair(i // size, i % size, int(flat[i])) for i in order.tolist() if flat[i] > 0]


@dataclass
class Mistakes:
    """Misclassified samples: their positions in the data set, true and predicted classes, confidence."""

    index: torch.Tensor
    labels: torch.Tensor
    predicted: torch.Tensor
    confidence: torch.Tensor

    def __len__(self) -> int:
        return len(self.index)


def confident_mistakes(predictions: Predictions, k: int = 16) -> Mistakes:
    """The `k` wrong predictions the model was surest of, most confident first."""
    predicted, confidence = predictions.predicted, predictions.confidence
    wrong = (predicted != predictions.labels).nonzero().flatten()
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices[:k]
    index = wrong[order]
    return Mistakes(index, predictions.labels[index], predicted[index], confidence[index])


def _score(value: torch.Tensor) -> float:
    """A metric as a plain float, rounded to 6 decimals (float32 carries no more, and JSON stays readable)."""
    return round(float(value), 6)


def classification_report(values: Mapping[str, torch.Tensor], class_names: Sequence[str] = CLASSES) -> dict:
    """Turn `classification_metrics().compute()` into plain data: headline scores, a row per class, the matrix."""
    matrix = values["confusion_matrix"].to("cpu", torch.int64)
    support, correct = matrix.sum(dim=1), matrix.diagonal()
    scores = ("precision", "recall", "f1")
    per_class = [
        {"class": name, "support": int(support[c]), "correct": int(correct[c]),
         **{score: _score(values[f"{score}_per_class"][c]) for score in scores}}
        for c, name in enumerate(class_names)
    ]
    return {
        "accuracy": _score(values["accuracy_micro"]),
        **{f"{score}_macro": _score(values[f"{score}_macro"]) for score in scores},
        "samples": int(matrix.sum()),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def format_report(report: Mapping) -> str:
    """Render `classification_report()` as text: headline scores, the per-class table, the confusion matrix."""
    samples = report["samples"]
    correct = sum(row["correct"] for row in report["per_class"])
    lines = [
        f"accuracy  {report['accuracy']:.2%}  ({correct:,} of {samples:,} correct, {samples - correct:,} mistakes)",
        f"macro     precision {report['precision_macro']:.2%}  recall {report['recall_macro']:.2%}  "
        f"F1 {report['f1_macro']:.2%}",
        "",
        f"{'class':>5}  {'support':>7}  {'correct':>7}  {'precision':>9}  {'recall':>7}  {'F1':>7}",
    ]
    for row in report["per_class"]:
        lines.append(
            f"{row['class']:>5}  {row['support']:>7,}  {row['correct']:>7,}  {row['precision']:>9.2%}  "
            f"{row['recall']:>7.2%}  {row['f1']:>7.2%}"
        )
    names = [row["class"] for row in report["per_class"]]
    width = max(5, *(len(f"{count:,}") for row in report["confusion_matrix"] for count in row))
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    lines.append(f"{'':>5}  " + " ".join(f"{name:>{width}}" for name in names))
    for name, row in zip(names, report["confusion_matrix"], strict=True):
        lines.append(f"{name:>5}  " + " ".join(f"{count:>{width},}" for count in row))
    return "\n".join(lines)


def evaluate_checkpoint(path: str | Path, *, device: torch.device | str | None = None, batch_size: int = 1000) -> dict:
    """Score a checkpoint on the MNIST test set: its `classification_report()`. A bad file raises `CheckpointError`."""
    model, _ = load_checkpoint(path)
    device = pick_device(device)
    images, labels = mnist_tensors(train=False)
    metrics = classification_metrics(model.config.num_classes)
    predict(model.to(device), TensorLoader(images, labels, batch_size, device=device), metrics=metrics)
    return classification_report(metrics.compute())
