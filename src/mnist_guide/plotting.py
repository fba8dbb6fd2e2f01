"""Every figure the notebooks draw, so a notebook cell stays one line of intent."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import PowerNorm
from matplotlib.patches import Rectangle

from mnist_guide.data import MNIST_MEAN, MNIST_STD


def _pixels(images: torch.Tensor) -> np.ndarray:
    """`[N, 28, 28]` pixels in [0, 1] for display, undoing the normalisation when it was applied."""
    pixels = images.detach().to("cpu", torch.float32).reshape(-1, *images.shape[-2:])
    if pixels.min() < -0.01 or pixels.max() > 1.01:  # normalised: bring back to [0, 1]
        pixels = pixels * MNIST_STD + MNIST_MEAN
    return pixels.clamp(0, 1).numpy()


def _grid(count: int, ncols: int, cell_size: float):
    """A figure of `count` cells, `ncols` to a row, with their axes off; returns it and the cells' axes."""
    ncols = min(ncols, count)
    nrows = -(-count // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell_size, nrows * cell_size * 1.15), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat[:count]


def _title_digit(ax, label=None, predicted=None) -> None:
    """Title a digit with its label and prediction (either may be None), crimson when they differ."""
    parts = [] if label is None else [str(int(label))]
    parts += [] if predicted is None else [f"pred {int(predicted)}"]
    wrong = label is not None and predicted is not None and int(predicted) != int(label)
    if parts:
        ax.set_title(" / ".join(parts), fontsize=9, color="crimson" if wrong else "black")


def _finish(fig, title: str | None = None):
    """Give the figure its title (when there is one), lay it out and return it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_digit_grid(
    images: torch.Tensor, labels: Sequence[int] | torch.Tensor | None = None,
    predictions: Sequence[int] | torch.Tensor | None = None, *, ncols: int = 8, title: str | None = None,
    cell_size: float = 1.1
):
    """Draw digits in a grid, each titled with its label (and prediction, red when wrong); returns the figure."""
    pixels = _pixels(images)
    fig, axes = _grid(len(pixels), ncols, cell_size)
    for index, ax in enumerate(axes):
        ax.imshow(pixels[index], cmap="gray_r", vmin=0, vmax=1)
        label = None if labels is None else labels[index]
        _title_digit(ax, label, None if predictions is None else predictions[index])
    return _finish(fig, title)


def plot_history(history, *, title: str | None = None):
    """Draw a run's loss and accuracy per epoch (a `training.History`), training beside test; returns the figure."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for split, style in (("train", "o-"), ("test", "s-")):
        for ax, name, scale in ((loss_ax, "loss", 1), (acc_ax, "accuracy", 100)):
            values = getattr(history, f"{split}_{name}")
            if values:  # no test figures when a run skipped evaluation
                ax.plot(range(1, len(values) + 1), [scale * value for value in values], style, label=split)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _finish(fig, title)


def plot_confusion_matrix(matrix: torch.Tensor, *, normalize: bool = False, ax=None):
    """Draw a confusion matrix (rows: true class, columns: predicted), as counts or as % of each true class."""
    counts = matrix.to("cpu", torch.float64)
    values = 100 * counts / counts.sum(dim=1, keepdim=True).clamp_min(1) if normalize else counts
    fig, ax = plt.subplots(figsize=(5.6, 4.8)) if ax is None else (ax.figure, ax)
    top = max(float(values.max()), 1.0)
    image = ax.imshow(values.numpy(), cmap="Blues", norm=PowerNorm(gamma=0.3, vmin=0, vmax=top))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class" if normalize else "count")
    size = len(values)
    for row in range(size):
        for col in range(size):
            value = float(values[row, col])
            if value:
                shade = "white" if (value / top) ** 0.3 > 0.6 else "black"
                text = f"{value:.1f}" if normalize else f"{value:.0f}"
                ax.text(col, row, text, ha="center", va="center", fontsize=7, color=shade)
    ax.set(xticks=range(size), yticks=range(size), xlabel="predicted class", ylabel="true class")
    ax.set_title("Confusion matrix (% of each true class)" if normalize else "Confusion matrix (counts)")
    return _finish(fig)


def plot_speedups(labels: Sequence[str], ratios: Sequence[float], *, title: str | None = None):
    """Draw speed-ups against a baseline as bars (1 = as fast; green faster, red slower); returns the figure."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    values = [float(ratio) for ratio in ratios]
    ax.barh(range(len(values)), values, color=["seagreen" if value >= 1 else "crimson" for value in values])
    ax.axvline(1.0, color="black", linewidth=1)
    for position, value in enumerate(values):
        ax.text(value, position, f" {value:.2f}x", va="center", fontsize=9)
    ax.set_yticks(range(len(values)), labels)
    ax.invert_yaxis()
    ax.set(xlim=(0, max(values) * 1.25), xlabel="speed-up against the baseline (higher is faster)")
    if title:
        ax.set_title(title)
    return _finish(fig)


def plot_sparsity_accuracy(
    sparsities: Sequence[float], accuracies: Sequence[float], *, baseline: float | None = None, title: str | None = None
):
    """Draw test accuracy against the fraction of weights pruned away; returns the figure."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([100 * s for s in sparsities], [100 * a for a in accuracies], marker="o")
    if baseline is not None:
        ax.axhline(100 * baseline, color="gray", linestyle="--", label="unpruned model")
        ax.legend(loc="lower left")
    ax.set(xlabel="weights pruned (%)", ylabel="test accuracy (%)", title=title or "Accuracy against sparsity")
    ax.grid(alpha=0.3)
    return _finish(fig)


def plot_feature_maps(
    maps: torch.Tensor, *, titles: Sequence[str] | None = None, ncols: int = 8, title: str | None = None,
    cmap: str = "viridis", cell_size: float = 1.3, symmetric: bool = False
):
    """Draw 2-D maps side by side (feature maps `[C, H, W]`, or kernels `[C, 1, k, k]`), each on its own scale."""
    maps = maps.detach().to("cpu", torch.float32).reshape(-1, *maps.shape[-2:])
    fig, axes = _grid(len(maps), ncols, cell_size)
    for index, ax in enumerate(axes):
        bound = float(maps[index].abs().max()) or 1.0
        ax.imshow(maps[index], cmap=cmap, **({"vmin": -bound, "vmax": bound} if symmetric else {}))
        if titles is not None:
            ax.set_title(titles[index], fontsize=9)
    return _finish(fig, title)


def plot_convolution_step(
    image: torch.Tensor, kernel: torch.Tensor, positions: Sequence[tuple[int, int]], *, title: str | None = None
):
    """Draw a kernel sliding over an image: the window at each position, the kernel, and the output it fills."""
    image = image.detach().to("cpu", torch.float32).reshape(image.shape[-2:])
    kernel = kernel.detach().to("cpu", torch.float32).reshape(kernel.shape[-2:])
    size = kernel.shape[0]
    output = torch.nn.functional.conv2d(image[None, None], kernel[None, None])[0, 0]
    limit = float(output.abs().max()) or 1.0
    fig, axes = plt.subplots(len(positions), 3, figsize=(9, 3.1 * len(positions)), squeeze=False)
    for (row, col), (image_ax, product_ax, output_ax) in zip(positions, axes, strict=True):
        image_ax.imshow(image, cmap="gray_r")
        image_ax.add_patch(Rectangle((col - 0.5, row - 0.5), size, size, fill=False, edgecolor="crimson", linewidth=2))
        image_ax.set_title(f"window at row {row}, column {col}", fontsize=10)
        product = image[row : row + size, col : col + size] * kernel
        bound = float(product.abs().max()) or 1.0
        product_ax.imshow(product, cmap="RdBu_r", vmin=-bound, vmax=bound)
        for r in range(size):
            for c in range(size):
                text = f"{float(product[r, c]):.1f}".replace("-0.0", "0.0")  # no negative zeros
                product_ax.text(c, r, text, ha="center", va="center", fontsize=7 if size <= 5 else 5)
        product_ax.set_title(f"window × kernel, sum = {float(product.sum()):.2f}", fontsize=10)
        output_ax.imshow(output, cmap="RdBu_r", vmin=-limit, vmax=limit)
        output_ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
        output_ax.set_title(f"output[{row}, {col}] = {float(output[row, col]):.2f}", fontsize=10)
        for ax in (image_ax, product_ax, output_ax):
            ax.set(xticks=[], yticks=[])
    return _finish(fig, title)


def plot_image_rows(
    rows: dict[str, Sequence], labels: Sequence[int] | torch.Tensor | None = None,
    predictions: dict[str, Sequence[int] | torch.Tensor] | None = None, *, title: str | None = None,
    cell_size: float = 1.3
):
    """Draw one row of images per entry of `rows`, any sizes, as their pixels really are; returns the figure.

    Grey images (`[H, W]`, integers 0-255 or floats in [0, 1]) are drawn with 0 black; RGB(A) images (`[H, W, C]`)
    over a checkerboard, so transparent paper shows. Titles: the label, and the prediction for rows in `predictions`.
    """
    count = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), count, figsize=(count * cell_size, len(rows) * cell_size * 1.2), squeeze=False)
    for axes_row, (name, images) in zip(axes, rows.items(), strict=True):
        axes_row[0].set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center")
        for index, (ax, image) in enumerate(zip(axes_row, images, strict=True)):
            image = torch.as_tensor(image).cpu()
            image = image.float() if image.is_floating_point() else image.float() / 255
            if image.dim() == 3:
                height, width = image.shape[:2]
                checks = (torch.arange(height)[:, None] // max(1, height // 8) + torch.arange(width) // max(1, width // 8)) % 2
                ax.imshow((0.75 + 0.15 * checks).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.imshow(image.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set(xticks=[], yticks=[])
            guesses = (predictions or {}).get(name)
            _title_digit(ax, None if labels is None else labels[index], None if guesses is None else guesses[index])
    return _finish(fig, title)


def plot_attention_weights(
    weights: Sequence[torch.Tensor], titles: Sequence[str], *, token_names: Sequence[str] | None = None
):
    """Draw attention-weight matrices `[queries, keys]` side by side, one panel each; returns the figure.

    Row i is how query i shares its attention over the keys (each row sums to 1).
    """
    fig, axes = plt.subplots(1, len(weights), figsize=(3.6 * len(weights) + 0.8, 3.6), squeeze=False)
    for ax, matrix, title in zip(axes[0], weights, titles, strict=True):
        image = ax.imshow(matrix.detach().cpu(), cmap="viridis", vmin=0, vmax=1)
        ax.set(title=title, xlabel="key (looked at)", ylabel="query (looking)")
        if token_names is not None:
            ax.set_xticks(range(len(token_names)), token_names, fontsize=8)
            ax.set_yticks(range(len(token_names)), token_names, fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label="attention weight")
    return fig


def plot_attention_on_digits(
    images: torch.Tensor, maps: torch.Tensor, *, row_titles: Sequence[str] | None = None, title: str | None = None
):
    """Overlay per-patch attention `[rows, N, grid, grid]` on `N` digits: one row per map set; returns the figure.

    Each map is stretched over its digit (nearest patch), brighter where the class token looks more.
    """
    pixels = _pixels(images)
    stretched = torch.nn.functional.interpolate(maps.detach().cpu(), size=pixels.shape[-2:], mode="nearest")
    rows, count = maps.shape[:2]
    fig, axes = plt.subplots(rows, count, figsize=(1.5 * count + 0.6, 1.5 * rows + 0.4), squeeze=False)
    for row, axes_row in enumerate(axes):
        for column, ax in enumerate(axes_row):
            overlay = stretched[row, column]
            ax.imshow(pixels[column], cmap="gray_r", vmin=0, vmax=1)
            ax.imshow(overlay, cmap="inferno", alpha=0.55, vmin=0, vmax=float(overlay.max()))
            ax.set(xticks=[], yticks=[])
        if row_titles is not None:
            axes_row[0].set_ylabel(row_titles[row], fontsize=9)
    return _finish(fig, title)


def plot_accuracy_vs_parameters(results: Sequence[dict], *, title: str | None = None):
    """Draw test accuracy against trainable parameters (log scale), one marker per method, one colour per data size.

    `results` holds dicts with keys `method`, `examples`, `trainable` and `accuracy`.
    """
    methods = list(dict.fromkeys(result["method"] for result in results))
    markers = dict(zip(methods, "osD^v<>ph", strict=False))
    sizes = sorted({result["examples"] for result in results})
    colors = dict(zip(sizes, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, ax = plt.subplots(figsize=(8.5, 4))
    for result in results:
        ax.scatter(result["trainable"], 100 * result["accuracy"], marker=markers[result["method"]], s=70,
                   color=colors[result["examples"]], edgecolor="black", linewidth=0.5, zorder=3)
    handles = [plt.Line2D([], [], marker=markers[name], linestyle="", color="gray", label=name) for name in methods]
    handles += [plt.Line2D([], [], marker="o", linestyle="", color=colors[size], label=f"{size} examples per class") for size in sizes]
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel="test accuracy (%)")
    ax.set_title(title or "Accuracy against trainable parameters")
    ax.grid(alpha=0.3)
    return _finish(fig)


def plot_memory_per_device(
    bars: dict[str, dict[str, float]], *, capacity: float | None = None, capacity_label: str = "device memory",
    unit: str = "GB", title: str | None = None
):
    """Draw what one device holds per setting as stacked bars (`{setting: {part: bytes}}`), its memory as a line."""
    scale = {"GB": 1e9, "GiB": 2**30, "MB": 1e6, "MiB": 2**20}[unit]
    parts = list(dict.fromkeys(part for held in bars.values() for part in held))
    fig, ax = plt.subplots(figsize=(1.3 * len(bars) + 3.5, 3.8))
    bottoms = [0.0] * len(bars)
    for part in parts:
        heights = [held.get(part, 0.0) / scale for held in bars.values()]
        ax.bar(range(len(bars)), heights, bottom=bottoms, label=part, edgecolor="white")
        bottoms = [bottom + height for bottom, height in zip(bottoms, heights, strict=True)]
    for position, total in enumerate(bottoms):
        ax.text(position, total, f"{total:,.1f}", ha="center", va="bottom", fontsize=9)
    if capacity is not None:
        ax.axhline(capacity / scale, color="crimson", linestyle="--", linewidth=1.2, label=capacity_label)
    ax.set_xticks(range(len(bars)), list(bars), fontsize=9)
    ax.set_ylabel(f"{unit} per device")
    ax.set_ylim(0, max([*bottoms, (capacity or 0) / scale]) * 1.12)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title(title or "Memory per device")
    return _finish(fig)
