"""The reference solutions of notebooks/03_modules.ipynb agree with torch.nn."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mnist_guide.solutions import modules


@pytest.mark.parametrize("sizes", [[2, 32, 32, 2], [784, 128, 10], [3, 1], [5, 4, 3, 2, 1]])
def test_count_mlp_parameters_equals_the_layers(sizes):
    layers = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    assert modules.count_mlp_parameters(sizes) == sum(p.numel() for layer in layers for p in layer.parameters())


def test_standardize_keeps_buffers_not_parameters():
    module = modules.Standardize(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
    assert list(module.parameters()) == []
    assert set(module.state_dict()) == {"mean", "std"}
    x = torch.tensor([[3.0, 6.0], [1.0, 2.0]])
    assert torch.equal(module(x), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert module.to(torch.float64).mean.dtype == torch.float64


def test_standardize_loads_a_state_dict():
    saved = modules.Standardize(torch.tensor([0.5]), torch.tensor([0.25])).state_dict()
    fresh = modules.Standardize(torch.zeros(1), torch.ones(1))
    fresh.load_state_dict(saved)
    assert torch.equal(fresh(torch.tensor([1.0])), torch.tensor([2.0]))


def test_make_mlp_layers_and_output():
    mlp = modules.make_mlp([2, 8, 8, 3], activation=nn.Tanh)
    assert [type(layer) for layer in mlp] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert mlp(torch.zeros(5, 2)).shape == (5, 3)
    assert sum(p.numel() for p in mlp.parameters()) == modules.count_mlp_parameters([2, 8, 8, 3])


def test_make_mlp_refuses_a_single_width():
    with pytest.raises(ValueError, match="at least an input and an output"):
        modules.make_mlp([4])
