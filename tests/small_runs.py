"""Short training runs for the tests: the course code path on a slice of MNIST, in well under a second."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from mnist_guide import training
from mnist_guide.data import TensorLoader, mnist_tensors
from mnist_guide.models import CNNConfig
from mnist_guide.training import Recipe

#: A recipe small enough for a test: a narrow CNN, two epochs over 1,024 images.
TINY = Recipe(epochs=2, batch_size=128, model=CNNConfig(conv1_channels=4, conv2_channels=8, hidden_units=16))


@lru_cache(maxsize=1)
def mnist_slice(train_count: int = 1024, test_count: int = 512) -> tuple[torch.Tensor, ...]:
    """The first images of each split, normalised, read once per test session."""
    images, labels = mnist_tensors(train=True)
    test_images, test_labels = mnist_tensors(train=False)
    return (images[:train_count].clone(), labels[:train_count].clone(),
            test_images[:test_count].clone(), test_labels[:test_count].clone())


def use_mnist_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `training.make_loaders` (hence `train_course_model` and the CLI) use `mnist_slice()`."""
    images, labels, test_images, test_labels = mnist_slice()

    def make_loaders(batch_size: int = 256, *, seed: int = 0, device=None, augment=None, **_ignored):
        train_loader = TensorLoader(images, labels, batch_size, shuffle=True, seed=seed, device=device, augment=augment)
        return train_loader, TensorLoader(test_images, test_labels, 256, device=device)

    monkeypatch.setattr(training, "make_loaders", make_loaders)
