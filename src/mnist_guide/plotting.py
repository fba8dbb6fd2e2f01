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
