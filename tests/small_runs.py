"""Short training runs for the tests: the course code path on a slice of MNIST, in well under a second."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from mnist_guide import data, training
from mnist_guide.data import make_loaders
from mnist_guide.models import CNNConfig
from mnist_guide.training import Recipe

#: A recipe small enough for a test: a narrow CNN, two epochs over 1,024 images.
TINY = Recipe(epochs=2, batch_size=128, model=CNNConfig(conv1_channels=4, conv2_channels=8, hidden_units=16))


@lru_cache(maxsize=1)
def mnist_slice(train_count: int = 1024, test_count: int = 512) -> tuple[torch.Tensor, ...]:
    """The first images of each split, normalised, read once per test session: the `data=` of a short run."""
    images, labels = data.mnist_tensors(train=True)
    test_images, test_labels = data.mnist_tensors(train=False)
    return (images[:train_count].clone(), labels[:train_count].clone(),
            test_images[:test_count].clone(), test_labels[:test_count].clone())


def cli_on_mnist_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line has no `data=`: give its training runs `mnist_slice()` instead of all of MNIST."""

    def loaders_on_the_slice(*args, data=None, **kwargs):  # the course code passes data=None for all of MNIST
        return make_loaders(*args, data=data if data is not None else mnist_slice(), **kwargs)

    monkeypatch.setattr(training, "make_loaders", loaders_on_the_slice)
