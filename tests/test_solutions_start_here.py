"""The reference solutions of notebooks/00_start_here.ipynb agree with counts made another way."""

from __future__ import annotations

import torch

from mnist_guide.solutions import start_here


def test_count_label_equals_bincount_for_every_digit():
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(labels, minlength=10)
    for digit in range(10):
        result = start_here.count_label(labels, digit)
        assert isinstance(result, int) and result == counts[digit].item()


def test_count_label_of_an_absent_digit_is_zero():
    assert start_here.count_label(torch.tensor([1, 1, 2]), 7) == 0


def test_background_fraction_counts_only_exact_zeros():
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[:7] = 1  # faint ink is not background
    result = start_here.background_fraction(image)
    assert isinstance(result, float) and result == 0.75
    assert start_here.background_fraction(torch.full((28, 28), 255, dtype=torch.uint8)) == 0.0
