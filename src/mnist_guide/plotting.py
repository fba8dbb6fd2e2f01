"""Every figure the notebooks draw, so a notebook cell stays one line of intent."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from mnist_guide.data import MNIST_MEAN, MNIST_STD


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation when it was applied, giving `[N, 28, 28]` pixels in [0, 1] for display."""
    images = images.detach().to("cpu", torch.float32)
    if images.dim() == 4:
        images = images[:, 0]
    if images.min() < -0.01 or images.max() > 1.01:  # normalised: bring back to [0, 1]
        images = images * MNIST_STD + MNIST_MEAN
    return images.clamp(0, 1)


def plot_digit_grid(
    images: torch.Tensor, labels: Sequence[int] | torch.Tensor | None = None,
    predictions: Sequence[int] | torch.Tensor | None = None, *, ncols: int = 8, title: str | None = None,
    cell_size: float = 1.1
):
    """Draw digits in a grid, each titled with its label (and prediction, red when wrong); returns the figure."""
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
    """Draw a run's loss and accuracy per epoch, training beside test; returns the figure."""
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
    matrix: torch.Tensor, *, normalize: bool = False, class_names: Sequence[str] | None = None,
    title: str | None = None, ax=None, figsize: tuple[float, float] = (5.6, 4.8)
):
    """Draw a confusion matrix (rows: true class, columns: predicted), as counts or as % of each true class."""
    from matplotlib.colors import PowerNorm

    counts = torch.as_tensor(matrix).detach().to("cpu", torch.float64)
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


def plot_speedups(labels: Sequence[str], ratios: Sequence[float], *, title: str | None = None, ax=None):
    """Draw speed-ups against a baseline as horizontal bars (1 = as fast; green faster, red slower); returns the figure.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    else:
        fig = ax.figure
    values = [float(ratio) for ratio in ratios]
    colors = ["seagreen" if value >= 1 else "crimson" for value in values]
    positions = range(len(values))
    ax.barh(positions, values, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    for position, value in zip(positions, values, strict=True):
        ax.text(value, position, f" {value:.2f}x", va="center", fontsize=9)
    ax.set_yticks(list(positions), list(labels))
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.25)
    ax.set_xlabel("speed-up against the baseline (higher is faster)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_sparsity_accuracy(
    sparsities: Sequence[float], accuracies: Sequence[float], *, baseline: float | None = None, title: str | None = None
):
    """Draw test accuracy against the fraction of weights pruned away; returns the figure."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([100 * s for s in sparsities], [100 * a for a in accuracies], marker="o")
    if baseline is not None:
        ax.axhline(100 * baseline, color="gray", linestyle="--", label="unpruned model")
        ax.legend(loc="lower left")
    ax.set(xlabel="weights pruned (%)", ylabel="test accuracy (%)")
    ax.set_title(title or "Accuracy against sparsity")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_feature_maps(
    maps: torch.Tensor, *, titles: Sequence[str] | None = None, ncols: int = 8, title: str | None = None,
    cmap: str = "viridis", cell_size: float = 1.3, symmetric: bool = False
):
    """Draw 2-D maps side by side (feature maps `[C, H, W]`, or kernels `[C, 1, k, k]`), each on its own scale."""
    maps = maps.detach().to("cpu", torch.float32)
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    count = len(maps)
    ncols = min(ncols, count)
    nrows = -(-count // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell_size, nrows * cell_size * 1.15), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < count:
            bound = float(maps[index].abs().max()) or 1.0
            limits = {"vmin": -bound, "vmax": bound} if symmetric else {}
            ax.imshow(maps[index], cmap=cmap, **limits)
            if titles is not None:
                ax.set_title(titles[index], fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_convolution_step(
    image: torch.Tensor, kernel: torch.Tensor, positions: Sequence[tuple[int, int]], *, title: str | None = None
):
    """Draw a kernel sliding over an image: the window at each position, the kernel, and the output it fills."""
    from matplotlib.patches import Rectangle

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
        for (r, c), value in zip(((r, c) for r in range(size) for c in range(size)), product.flatten(), strict=True):
            text = f"{float(value):.1f}"
            text = "0.0" if text == "-0.0" else text
            product_ax.text(c, r, text, ha="center", va="center", fontsize=7 if size <= 5 else 5)
        product_ax.set_title(f"window × kernel, sum = {float(product.sum()):.2f}", fontsize=10)
        output_ax.imshow(output, cmap="RdBu_r", vmin=-limit, vmax=limit)
        output_ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
        output_ax.set_title(f"output[{row}, {col}] = {float(output[row, col]):.2f}", fontsize=10)
        for ax in (image_ax, product_ax, output_ax):
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_image_rows(
    rows: dict[str, Sequence], labels: Sequence[int] | torch.Tensor | None = None,
    predictions: dict[str, Sequence[int] | torch.Tensor] | None = None, *, title: str | None = None,
    cell_size: float = 1.3
):
    """Draw one row of images per entry of `rows`, any sizes, as their pixels really are; returns the figure.

    Grey images (`[H, W]`, integers 0-255 or floats in [0, 1]) are drawn with 0 black; RGB(A) images (`[H, W, C]`) in
    their colours over a checkerboard, so transparent paper shows. Each image is titled with its label,
    and, for rows in `predictions`, the prediction (red when wrong).
    """
    count = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), count, figsize=(count * cell_size, len(rows) * cell_size * 1.2), squeeze=False)
    for axes_row, (name, images) in zip(axes, rows.items(), strict=True):
        axes_row[0].set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center")
        for index, ax in enumerate(axes_row):
            ax.set_xticks([])
            ax.set_yticks([])
            if index >= len(images):
                ax.axis("off")
                continue
            image = torch.as_tensor(images[index]).detach().cpu()
            image = image.float() if image.is_floating_point() else image.float() / 255
            if image.dim() == 3:
                height, width = image.shape[:2]
                checks = (torch.arange(height)[:, None] // max(1, height // 8) + torch.arange(width) // max(1, width // 8)) % 2
                ax.imshow(0.75 + 0.15 * checks, cmap="gray", vmin=0, vmax=1)
                ax.imshow(image.clamp(0, 1).numpy() if image.shape[2] in (3, 4) else image[..., 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            parts, color = [], "black"
            if labels is not None and index < len(labels):
                parts.append(str(int(labels[index])))
            if predictions is not None and name in predictions:
                predicted = int(predictions[name][index])
                parts.append(f"pred {predicted}")
                if labels is not None and predicted != int(labels[index]):
                    color = "crimson"
            if parts:
                ax.set_title(" / ".join(parts), fontsize=9, color=color)


def plot_attention_weights(
    weights: Sequence[torch.Tensor], titles: Sequence[str], *, token_names: Sequence[str] | None = None
):
    """Draw attention-weight matrices `[queries, keys]` side by side, one panel each; returns the figure.

    Row i is how query i shares its attention over the keys (each row sums to 1).
    """
    if len(weights) != len(titles) or not weights:
        raise ValueError(f"need one title per matrix, got {len(weights)} matrices and {len(titles)} titles")
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
    pixels = to_pixels(images)
    rows, count = maps.shape[0], maps.shape[1]
    if count != len(pixels):
        raise ValueError(f"{count} maps per row for {len(pixels)} digits")
    fig, axes = plt.subplots(rows, count, figsize=(1.5 * count + 0.6, 1.5 * rows + 0.4), squeeze=False)
    size = pixels.shape[-1]
    for row in range(rows):
        for column in range(count):
            ax = axes[row, column]
            grid = maps[row, column].detach().cpu()[None, None]
            stretched = torch.nn.functional.interpolate(grid, size=(size, size), mode="nearest")[0, 0]
            ax.imshow(pixels[column], cmap="gray_r", vmin=0, vmax=1)
            ax.imshow(stretched, cmap="inferno", alpha=0.55, vmin=0, vmax=float(stretched.max()))
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[row], fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_parameters(results: Sequence[dict], *, title: str | None = None):
    """Draw test accuracy against trainable parameters (log scale), one marker per method, one colour per data size.

    `results` holds dicts with keys `method`, `examples`, `trainable` and `accuracy`.
    """
    if not results:
        raise ValueError("no results to draw")
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
    fig.tight_layout()
    return fig


def plot_memory_per_device(
    bars: dict[str, dict[str, float]], *, capacity: float | None = None, capacity_label: str = "device memory",
    unit: str = "GB", title: str | None = None
):
    """Draw what one device holds in each setting as stacked bars (`{setting: {part: bytes}}`), with its memory as a line.
    """
    if not bars:
        raise ValueError("no settings to draw")
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
    fig.tight_layout()
    return fig
