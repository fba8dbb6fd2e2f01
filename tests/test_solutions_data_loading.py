"""The reference solutions of notebooks/06_data_loading.ipynb agree with torch.utils.data and the course's data."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from mnist_guide.data import MNIST_MEAN, MNIST_STD
from mnist_guide.solutions import data_loading


@pytest.mark.parametrize("count, batch_size", [(60_000, 256), (10_000, 1000), (7, 3), (3, 7), (1, 1), (0, 4)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_number_of_batches_equals_the_length_of_a_data_loader(count, batch_size, drop_last):
    loader = DataLoader(range(count), batch_size=batch_size, drop_last=drop_last)
    assert data_loading.number_of_batches(count, batch_size, drop_last) == len(loader)


def test_even_odd_digits_labels_parity_and_keeps_the_image():
    images = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    digits = torch.arange(10)
    dataset = data_loading.EvenOddDigits(images, digits)
    assert len(dataset) == 10
    assert [dataset[i][1] for i in range(10)] == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert all(torch.equal(dataset[i][0], images[i]) for i in range(10))
    batch_images, batch_labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch_images.shape == (4, 1, 28, 28) and batch_labels.tolist() == [0, 1, 0, 1]


def test_normalize_uses_the_training_constants():
    pixels = torch.tensor([0.0, MNIST_MEAN, MNIST_MEAN + MNIST_STD, 1.0])
    torch.testing.assert_close(
        data_loading.normalize(pixels), torch.tensor([-MNIST_MEAN / MNIST_STD, 0.0, 1.0, (1 - MNIST_MEAN) / MNIST_STD])
    )
