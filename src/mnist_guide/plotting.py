"""Every figure the notebooks draw, so a notebook cell stays one line of intent."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from mnist_guide.data import MNIST_MEAN, MNIST_STD


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation when it was applied, giving `[N, 28, 28]` pixels in [0, 1] for display.

    Taught in notebooks/00_start_here.ipynb.
    """
    images = images.detach().to("cpu", torch.float32)
    if images.dim() == 4:
        images = images[:, 0]
    if images.min() < -0.01 or images.max() > 1.01:  # normalised: bring back to [0, 1]
        images = images * MNIST_STD + MNIST_MEAN
    return images.clamp(0, 1)


def plot_digit_grid(
    images: torch.Tensor,
    labels: Sequence[int] | torch.Tensor | None = None,
    predictions: Sequence[int] | torch.Tensor | None = None,
    *,
    ncols: int = 8,
    title: str | None = None,
    cell_size: float = 1.1,
):
    """Draw digits in a grid, each titled with its label (and prediction, red when wrong); returns the figure.

    Taught in notebooks/00_start_here.ipynb.
    """
    pixels = to_pixels(images)
    count = len(pixels)
    nrows = max(1, -(-count // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell_size, nrows * cell_size * 1.15), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= count:
            continue
        ax.imshow(pixels[index], cmap="gray_r", vmin=0, vmax=1)
        parts = []
        if labels is not None:
            parts.append(f"{int(labels[index])}")
        color = "black"
        if predictions is not None:
            predicted = int(predictions[index])
            parts.append(f"pred {predicted}")
            if labels is not None and predicted != int(labels[index]):
                color = "crimson"
        if parts:
            ax.set_title(" / ".join(parts), fontsize=9, color=color)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _history_values(history, key: str) -> list[float]:
    """Read one series from a `training.History` or the plain dict a checkpoint stores."""
    values = history.get(key, []) if isinstance(history, dict) else getattr(history, key, [])
    return [float(value) for value in values]


def plot_history(history, *, title: str | None = None, figsize: tuple[float, float] = (10, 3.6)):
    """Draw a run's loss and accuracy per epoch, training beside test; returns the figure.

    Takes a `training.History` or its `to_dict()` (as stored in a checkpoint's `history`).
    The loss axis is logarithmic, so the late epochs' small gains stay visible.

    Taught in notebooks/06_mnist_cnn.ipynb.
    """
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=figsize)
    for split, style in (("train", "o-"), ("test", "s-")):
        loss = _history_values(history, f"{split}_loss")
        accuracy = _history_values(history, f"{split}_accuracy")
        epochs = range(1, len(loss) + 1)
        if loss:
            loss_ax.plot(epochs, loss, style, label=split)
        if accuracy:
            acc_ax.plot(range(1, len(accuracy) + 1), [100 * a for a in accuracy], style, label=split)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(
    matrix: torch.Tensor,
    *,
    normalize: bool = False,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    ax=None,
    figsize: tuple[float, float] = (5.6, 4.8),
):
    """Draw a confusion matrix (rows: true class, columns: predicted), as counts or as % of each true class.

    Every non-zero cell is written out, and the colour scale is compressed (power 0.3) so that
    the few mistakes off the diagonal stay visible beside its large counts. Returns the figure.

    Taught in notebooks/07_evaluation.ipynb.
    """
    from matplotlib.colors import PowerNorm

    counts = torch.as_tensor(matrix).detach().to("cpu", torch.float64)
    if counts.dim() != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {tuple(counts.shape)}")
    size = counts.shape[0]
    values = 100 * counts / counts.sum(dim=1, keepdim=True).clamp_min(1) if normalize else counts
    names = list(class_names) if class_names is not None else [str(c) for c in range(size)]
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    top = max(float(values.max()), 1.0)
    image = ax.imshow(values.numpy(), cmap="Blues", norm=PowerNorm(gamma=0.3, vmin=0, vmax=top))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class" if normalize else "count")
    for row in range(size):
        for col in range(size):
            value = float(values[row, col])
            if value == 0:
                continue
            text = f"{value:.1f}" if normalize else f"{value:.0f}"
            shade = "white" if (value / top) ** 0.3 > 0.6 else "black"
            ax.text(col, row, text, ha="center", va="center", fontsize=7, color=shade)
    ax.set_xticks(range(size), names)
    ax.set_yticks(range(size), names)
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(title or ("Confusion matrix (% of each true class)" if normalize else "Confusion matrix (counts)"))
    fig.tight_layout()
    return fig
