"""The reference solutions of notebooks/04_loss_functions.ipynb agree with PyTorch and refuse bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from mnist_guide.solutions import losses


def test_uniform_guess_loss_is_the_cross_entropy_of_equal_logits():
    for classes in (2, 10, 1000):
        expected = F.cross_entropy(torch.zeros(3, classes, dtype=torch.float64), torch.tensor([0, 1, classes - 1])).item()
        assert math.isclose(losses.uniform_guess_loss(classes), expected, rel_tol=1e-12)


def test_uniform_guess_loss_refuses_no_classes():
    with pytest.raises(ValueError, match="at least 1"):
        losses.uniform_guess_loss(0)


def test_soft_cross_entropy_matches_probability_targets_and_stays_finite():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    targets = torch.softmax(torch.randn(5, 7, generator=generator, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(losses.soft_cross_entropy(logits, targets), F.cross_entropy(logits, targets))
    assert losses.soft_cross_entropy(logits * 1e4, targets).isfinite()


def test_soft_cross_entropy_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        losses.soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("delta", [0.1, 1.0, 10.0])
def test_huber_loss_matches_the_library(delta):
    generator = torch.Generator().manual_seed(1)
    predictions = 5 * torch.randn(50, generator=generator, dtype=torch.float64)
    targets = torch.randn(50, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(losses.huber_loss(predictions, targets, delta), F.huber_loss(predictions, targets, delta=delta))


def test_huber_loss_refuses_a_non_positive_delta():
    with pytest.raises(ValueError, match="positive"):
        losses.huber_loss(torch.zeros(2), torch.zeros(2), delta=0.0)
