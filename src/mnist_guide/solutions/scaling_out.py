"""Reference solutions for notebooks/11_scaling_out.ipynb."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_guide.distributed import World, shard_indices


def rank_of_sample(sample: int, dataset_size: int, world_size: int, *, seed: int = 0, epoch: int = 0) -> int:
    """Exercise 1: which process trains on `sample` in `epoch` when `world_size` processes share the data."""
    for rank in range(world_size):
        if sample in shard_indices(dataset_size, World(rank=rank, world_size=world_size), seed=seed, epoch=epoch):
            return rank
    raise ValueError(f"sample {sample} is not in a data set of {dataset_size}")


def accumulated_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, micro_batch: int) -> torch.Tensor:
    """Exercise 2: the whole batch's mean-loss gradient, from micro-batches of up to `micro_batch` samples.

    Each micro-batch adds its *summed* loss divided by the whole batch's size, so a short last
    micro-batch weighs what its samples weigh.
    """
    model.zero_grad()
    for part_images, part_labels in zip(images.split(micro_batch), labels.split(micro_batch), strict=True):
        (F.cross_entropy(model(part_images), part_labels, reduction="sum") / len(labels)).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def adam_training_bytes(parameters: int, world_size: int, strategy: str) -> int:
    """Exercise 3: bytes of weights, gradients and Adam's two moments held by each process, in float32.

    4 bytes each for the weight, its gradient and Adam's two running averages: 16 per parameter.
    DDP keeps all of it in every process; FSDP splits it evenly over the processes.
    """
    total = 16 * parameters
    if strategy == "ddp":
        return total
    if strategy == "fsdp":
        return -(-total // world_size)  # rounded up: a process holds a whole share
    raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
