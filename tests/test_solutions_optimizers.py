"""The reference solutions of notebooks/05_optimizers.ipynb follow torch.optim step by step."""

import pytest
import torch

from mnist_guide.solutions import optimizers


def bowl(w):
    return 0.5 * (w[0] ** 2 + 50 * w[1] ** 2)


def paths(step, optimizer_class, steps=25, library_only=None, **hyper):
    """The path of a hand-written rule and of the library's optimizer on the bowl, in float64.

    `library_only` holds options only the library takes (such as `nesterov=True`).
    """
    start = torch.tensor([-4.0, 1.0], dtype=torch.float64)
    w, state, by_hand = start.clone(), {}, [start.clone()]
    for _ in range(steps):
        leaf = w.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(bowl(leaf), leaf)
        w = step(w, grad, state, **hyper)
        by_hand.append(w)
    w = start.clone().requires_grad_(True)
    optimizer = optimizer_class([w], **hyper, **(library_only or {}))
    library = [start.clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        bowl(w).backward()
        optimizer.step()
        library.append(w.detach().clone())
    return torch.stack(by_hand), torch.stack(library)


def test_nesterov_step_equals_sgd_with_nesterov():
    by_hand, library = paths(optimizers.nesterov_step, torch.optim.SGD, library_only={"nesterov": True}, lr=0.02, momentum=0.7)
    torch.testing.assert_close(by_hand, library, rtol=0, atol=1e-12)


def test_adamw_step_equals_torch_adamw():
    by_hand, library = paths(optimizers.adamw_step, torch.optim.AdamW, lr=0.3, weight_decay=0.1)
    torch.testing.assert_close(by_hand, library, rtol=0, atol=1e-12)


def test_largest_stable_lr_is_two_over_the_steepest_curvature():
    assert optimizers.largest_stable_lr([1.0, 50.0]) == pytest.approx(0.04)
    assert optimizers.largest_stable_lr((80.0, 2.0)) == pytest.approx(0.025)


@pytest.mark.parametrize("curvatures", [[], [1.0, 0.0], [-2.0]])
def test_largest_stable_lr_refuses_non_positive_curvatures(curvatures):
    with pytest.raises(ValueError, match="positive"):
        optimizers.largest_stable_lr(curvatures)
