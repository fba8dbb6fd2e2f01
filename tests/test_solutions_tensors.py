"""The reference solutions of notebooks/01_tensors.ipynb agree with the library."""

from __future__ import annotations

import pytest
import torch

from mnist_guide.solutions import tensors


def test_to_unit_floats_handles_non_contiguous_batches():
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    transposed = images.transpose(1, 2)
    result = tensors.to_unit_floats(transposed)
    assert result.shape == (3, 784) and result.dtype == torch.float32
    assert torch.equal(result, transposed.contiguous().view(3, 784).float() / 255)
    assert tensors.to_unit_floats(torch.full((1, 28, 28), 255, dtype=torch.uint8)).max() == 1


def test_pairwise_sq_distances_equals_cdist():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    assert torch.allclose(tensors.pairwise_sq_distances(a, b), torch.cdist(a, b) ** 2, atol=1e-5)


def test_pairwise_sq_distances_rejects_mismatched_dimensions():
    with pytest.raises(RuntimeError):
        tensors.pairwise_sq_distances(torch.zeros(2, 3), torch.zeros(2, 4))


def test_standardize_columns_gives_zero_mean_unit_std_without_touching_input():
    x = torch.tensor([[1.0, 10.0], [2.0, 30.0], [4.0, 20.0]])
    before = x.clone()
    result = tensors.standardize_columns(x)
    assert torch.equal(x, before)
    assert torch.allclose(result.mean(dim=0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(result.std(dim=0), torch.ones(2), atol=1e-6)
