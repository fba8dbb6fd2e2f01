"""Reference solutions for notebooks/06_data_loading.ipynb."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from mnist_guide.data import MNIST_MEAN, MNIST_STD


def number_of_batches(count: int, batch_size: int, drop_last: bool = False) -> int:
    """Exercise 1: how many batches a `DataLoader` makes of `count` samples.

    A last, shorter batch counts unless `drop_last` drops it: 60,000 in batches of 256 make 235 (234).
    """
    return count // batch_size if drop_last else math.ceil(count / batch_size)


class EvenOddDigits(Dataset):
    """Exercise 2: the digits with label 0 for an even digit and 1 for an odd one."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index]) % 2


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """Exercise 3: standardise pixels in [0, 1] with the training set's mean and standard deviation.

    The test set uses the training set's constants too, so its mean comes out close to 0, not exactly 0.
    """
    return (pixels - MNIST_MEAN) / MNIST_STD
