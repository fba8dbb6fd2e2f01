"""Reference solutions for notebooks/12_transformers.ipynb."""

from __future__ import annotations

import torch

from mnist_guide.models import ViTConfig


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Exercise 1: cut `[N, C, H, W]` images into `[N, patches, C * patch_size**2]` flattened patches.

    Patches are taken row by row, left to right, each flattened channel by channel and row by row:
    the order in which a convolution with stride = kernel = `patch_size` visits them, so a Linear
    layer on these rows computes what `MnistViT.patch_embedding` computes.
    """
    n, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide the image size {height} x {width}")
    rows, cols = height // patch_size, width // patch_size
    patches = images.reshape(n, channels, rows, patch_size, cols, patch_size)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(n, rows * cols, channels * patch_size * patch_size)


def vit_parameter_count(config: ViTConfig) -> int:
    """Exercise 2: the number of parameters of `MnistViT(config)`, from the layer formulas alone.

    Embedding: a `patch_size**2 -> dim` Linear with bias, the class token, one position per token.
    Each block: two LayerNorms (2 dim each), qkv (3 dim^2 + 3 dim), the output projection
    (dim^2 + dim) and the MLP (2 dim mlp_dim + mlp_dim + dim). Then the last LayerNorm and the head.
    """
    d, m = config.dim, config.mlp_dim
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    embedding = config.patch_size**2 * d + d + d + tokens * d
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (2 * d * m + m + d)
    head = 2 * d + d * config.num_classes + config.num_classes
    return embedding + config.depth * block + head


def local_attention_mask(length: int, window: int) -> torch.Tensor:
    """Exercise 3: a `[length, length]` boolean mask letting token i attend to tokens j with |i - j| <= window.

    Passed as `attn_mask` to `scaled_dot_product_attention` (True = may attend), it gives each
    token a neighbourhood of `2 window + 1` tokens instead of the whole sequence.
    """
    if window < 0:
        raise ValueError(f"window must be at least 0, not {window}")
    positions = torch.arange(length)
    return (positions[:, None] - positions[None, :]).abs() <= window
