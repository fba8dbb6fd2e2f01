"""The course's CNN and Vision Transformer for MNIST, each described by a plain config so that checkpoints can rebuild it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnist_guide.data import NORMALISED_BLACK

#: What `CNNConfig.norm` puts after each convolution.
NORMS = {
    "batch": nn.BatchNorm2d,
    "group": lambda channels: nn.GroupNorm(math.gcd(4, channels), channels),
    "none": lambda channels: nn.Identity(),
}


@dataclass(frozen=True)
class CNNConfig:
    """The shape of `MnistCNN`: channels of the two convolutions, hidden units, dropout, normalisation.

    `norm="group"` normalises each sample on its own, so a batch split across processes computes the same thing.
    `pool_first` max-pools straight after each convolution: norm and ReLU then work on a quarter of the pixels.
    `test_shifts`: in eval mode, the logits are the mean over the image and its four one-pixel shifts.
    """

    conv1_channels: int = 16
    conv2_channels: int = 32
    hidden_units: int = 128
    dropout: float = 0.0
    num_classes: int = 10
    norm: str = "batch"
    pool_first: bool = False
    test_shifts: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {tuple(NORMS)}, got {self.norm!r}")


class MnistCNN(nn.Module):
    """Two convolution blocks (conv, norm, ReLU, max-pool) and a two-layer classifier: `[N, 1, 28, 28]` -> `[N, 10]`."""

    def __init__(self, config: CNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or CNNConfig()
        c1, c2, norm = self.config.conv1_channels, self.config.conv2_channels, self.config.norm

        def block(conv: nn.Conv2d) -> list[nn.Module]:
            rest = [NORMS[norm](conv.out_channels), nn.ReLU(inplace=True)]
            return [conv, nn.MaxPool2d(2), *rest] if self.config.pool_first else [conv, *rest, nn.MaxPool2d(2)]

        self.features = nn.Sequential(
            *block(nn.Conv2d(1, c1, kernel_size=5, bias=norm == "none")),  # 28 -> 24, pooled to 12
            *block(nn.Conv2d(c1, c2, kernel_size=3, bias=norm == "none")),  # 12 -> 10, pooled to 5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 5 * 5, self.config.hidden_units),
            nn.ReLU(inplace=True),
            nn.Dropout(self.config.dropout),
            nn.Linear(self.config.hidden_units, self.config.num_classes),
        )

        self.test_shifts, self.black = self.config.test_shifts, NORMALISED_BLACK  # plain attributes for TorchScript

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.test_shifts:
            return self.classifier(self.features(x))
        padded = F.pad(x, (1, 1, 1, 1), value=self.black)
        views = torch.cat([x, padded[:, :, :-2, 1:-1], padded[:, :, 2:, 1:-1], padded[:, :, 1:-1, :-2], padded[:, :, 1:-1, 2:]])
        return self.classifier(self.features(views)).reshape(5, x.shape[0], -1).mean(0)


@dataclass(frozen=True)
class ViTConfig:
    """The shape of `MnistViT`: 7 x 7 patches cut a digit into 16 tokens (17 with the class token), width, depth, heads."""

    patch_size: int = 7
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_dim: int = 128
    dropout: float = 0.0
    num_classes: int = 10
    image_size: int = 28

    def __post_init__(self) -> None:  # a learner's experiment or a checkpoint's config: refuse what silently drops pixels
        if self.image_size % self.patch_size or self.dim % self.heads:
            raise ValueError(f"patch_size must divide {self.image_size} and heads must divide dim, got {self}")


class SelfAttention(nn.Module):
    """Multi-head self-attention, `[N, T, dim]` in and out: one Linear makes queries, keys and values, SDPA mixes them.

    `project` gives the per-head queries, keys and values, so the attention weights can be computed by hand.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of `x` `[N, T, dim]`, each `[N, heads, T, dim / heads]`."""
        n, t, _ = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # [3, N, heads, T, dim / heads]
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x)
        mixed = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(mixed.transpose(1, 2).flatten(2))


class TransformerBlock(nn.Module):
    """A pre-norm transformer block: `x + attention(norm(x))`, then `x + mlp(norm(x))`."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MnistViT(nn.Module):
    """A small Vision Transformer: patches as tokens, a class token, learned positions, pre-norm blocks.

    `[N, 1, 28, 28]` normalised pixels in, `[N, num_classes]` logits out, read from the class token after the last block.
    """

    def __init__(self, config: ViTConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ViTConfig()
        self.num_patches = (c.image_size // c.patch_size) ** 2
        # A convolution with stride = kernel = patch size is a Linear layer applied to each patch.
        self.patch_embedding = nn.Conv2d(1, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.positions = nn.Parameter(torch.randn(1, self.num_patches + 1, c.dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(c.dim, c.heads, c.mlp_dim, c.dropout) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The input sequence `[N, 1 + patches, dim]`: class token, then one token per patch, plus positions."""
        patches = self.patch_embedding(images).flatten(2).transpose(1, 2)  # [N, patches, dim]
        class_token = self.class_token.expand(images.shape[0], -1, -1)  # shape[0], not len(): export keeps N symbolic
        return torch.cat([class_token, patches], dim=1) + self.positions

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.tokens(images)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


#: The model classes a checkpoint may name, with their config types.
MODELS: dict[str, tuple[type[nn.Module], type]] = {"MnistCNN": (MnistCNN, CNNConfig), "MnistViT": (MnistViT, ViTConfig)}


def build_model(config: object | None = None) -> nn.Module:
    """Build a course model from its config object, or from the dict a checkpoint stores (with its `class`)."""
    if isinstance(config, dict):
        values = dict(config)
        model_class, config_class = MODELS[values.pop("class", "MnistCNN")]
        return model_class(config_class(**values))
    return MnistViT(config) if isinstance(config, ViTConfig) else MnistCNN(config)


def model_config(model: nn.Module) -> dict:
    """The plain dict a checkpoint stores for `model`: its class name and its config."""
    config = getattr(model, "config", None)
    return {"class": type(model).__name__, **(asdict(config) if config is not None else {})}


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Count the parameters of `model` (by default only those that train)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
