"""mnist_guide.data.mnist_style: any image of a digit -> MNIST's layout (polarity, alpha, 16 bits, crop, 20x20, centre)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnist_guide import export
from mnist_guide.data import (
    MNIST_BOX,
    MNIST_CENTRE,
    NoInkError,
    ink_on_black,
    mnist_dataset,
    mnist_style,
)
from mnist_guide.training import load_checkpoint

COUNT = 200


@pytest.fixture(scope="module")
def test_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 10,000 test images as uint8 `[N, 28, 28]` and their labels."""
    dataset = mnist_dataset(train=False)
    return dataset.data, dataset.targets


@pytest.fixture(scope="module")
def model(course_checkpoint):
    return export.make_deployable(load_checkpoint(course_checkpoint)[0])


def classify(model, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(images.float().view(-1, 1, 28, 28)).argmax(1)


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    rows, columns = torch.arange(image.shape[0]).float(), torch.arange(image.shape[1]).float()
    mass = image.sum()
    return float((image.sum(1) * rows).sum() / mass), float((image.sum(0) * columns).sum() / mass)


def on_canvas(digit: torch.Tensor, side: int, top: int, left: int, size: int) -> torch.Tensor:
    """The 28x28 `digit` (uint8) scaled to `size` pixels and drawn at (`top`, `left`) on a black `side` canvas."""
    scaled = F.interpolate(digit[None, None].float(), size=(size, size), mode="bilinear", antialias=True)[0, 0]
    canvas = torch.zeros(side, side)
    canvas[top : top + size, left : left + size] = scaled
    return canvas.round().clamp(0, 255).to(torch.uint8)


def test_the_constants_are_mnists_own_layout(test_digits):
    images = test_digits[0].float()
    rows, columns = (images > 0).any(2), (images > 0).any(1)
    height = 28 - rows.float().argmax(1) - rows.flip(1).float().argmax(1)  # first to last row with ink
    width = 28 - columns.float().argmax(1) - columns.flip(1).float().argmax(1)
    assert (torch.maximum(height, width) == MNIST_BOX).float().mean() > 0.999
    centres = torch.tensor([centre_of_mass(image) for image in images[:2000]])
    assert torch.allclose(centres.mean(0), torch.tensor([MNIST_CENTRE, MNIST_CENTRE]), atol=0.05)
    assert centres.sub(MNIST_CENTRE).abs().max() <= 0.75


def test_mnist_digits_come_back_as_they_are(test_digits):
    images = test_digits[0][:COUNT]
    out = torch.stack([mnist_style(image) for image in images])
    assert out.shape == (COUNT, 28, 28) and out.dtype == torch.float32
    # The same place, the same size: only the contrast is stretched so the strongest stroke is 1.
    assert (out - images.float() / 255).abs().max() <= 1.5 / 255
    assert torch.equal(out.amax((1, 2)), torch.ones(COUNT))


@pytest.mark.parametrize(
    "variant",
    ["moved", "three times larger", "smaller", "black on white", "RGBA ink in alpha", "white in alpha",
     "RGB red on yellow", "16-bit", "floats", "channels first", "grey paper"],
)
def test_a_redrawn_digit_comes_back_close_and_reads_the_same(test_digits, model, variant):
    images, labels = test_digits[0][:COUNT], test_digits[1][:COUNT]
    reference = torch.stack([mnist_style(image) for image in images])

    def redraw(digit: torch.Tensor):
        if variant == "moved":
            return on_canvas(digit, 64, 30, 3, 28)
        if variant == "three times larger":
            return on_canvas(digit, 100, 10, 6, 84)
        if variant == "smaller":
            return on_canvas(digit, 64, 40, 20, 22)
        if variant == "black on white":
            return 255 - digit
        if variant == "RGBA ink in alpha":  # what a browser canvas gives: black strokes on transparent paper
            return torch.stack([torch.zeros_like(digit)] * 3 + [digit], dim=-1)
        if variant == "white in alpha":
            return torch.stack([torch.full_like(digit, 255)] * 3 + [digit], dim=-1).numpy()
        if variant == "RGB red on yellow":
            ink = digit.float() / 255
            paper, pen = torch.tensor([1.0, 0.9, 0.2]), torch.tensor([0.7, 0.0, 0.0])
            return (paper + ink[..., None] * (pen - paper)).numpy()
        if variant == "16-bit":
            return digit.numpy().astype(np.uint16) * 257
        if variant == "floats":
            return digit.float() / 255
        if variant == "channels first":
            return torch.stack([digit] * 3)
        if variant == "grey paper":  # a darker page: the paper level is subtracted, not taken for ink
            return (90 + digit.float() * (165 / 255)).round().to(torch.uint8)
        raise AssertionError(variant)

    out = torch.stack([mnist_style(redraw(image)) for image in images])
    difference = (out - reference).abs()
    if variant in ("moved", "black on white", "RGBA ink in alpha", "white in alpha", "16-bit", "floats", "channels first"):
        assert difference.max() < 1e-5, f"{variant}: the same pixels should come back"
    else:
        assert difference.mean() < 0.06, f"{variant}: mean difference {difference.mean():.3f}"
    reads = classify(model, out)
    assert (reads == classify(model, reference)).float().mean() >= 0.99, f"{variant}: reads differently"
    assert (reads == labels).float().mean() >= 0.98


def test_a_canvas_drawing_fits_the_box_and_is_centred(test_digits):
    drawing = on_canvas(test_digits[0][7], 280, 150, 20, 120)  # small and low in a big canvas
    out = mnist_style(255 - drawing)
    rows, columns = torch.nonzero(out, as_tuple=True)
    assert max(rows.max() - rows.min(), columns.max() - columns.min()) + 1 == MNIST_BOX
    row, column = centre_of_mass(out)
    assert abs(row - MNIST_CENTRE) <= 0.5 and abs(column - MNIST_CENTRE) <= 0.5
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_the_aspect_ratio_is_kept():
    bar = np.full((300, 300), 255, dtype=np.uint8)
    bar[140:160, 50:250] = 0  # a stroke 200 wide and 20 high
    out = mnist_style(bar)
    rows, columns = torch.nonzero(out > 0.5, as_tuple=True)
    assert (columns.max() - columns.min() + 1, rows.max() - rows.min() + 1) == (20, 2)


def test_16_bit_images_are_scaled_not_clipped(test_digits):
    digit = test_digits[0][0]
    deep = digit.numpy().astype(np.uint16) * 257  # 0-65535
    assert torch.allclose(ink_on_black(deep), digit.float() / 255, atol=1e-6)
    # Clipping to 255 would saturate every stroke pixel; scaling keeps the grey levels.
    clipped = mnist_style(np.minimum(deep, 255).astype(np.uint8))
    assert (clipped == 1).sum() > 2 * (mnist_style(deep) == 1).sum()
    assert torch.equal(mnist_style(deep.astype(np.int32), max_value=65535), mnist_style(deep))


@pytest.mark.parametrize(
    "blank",
    [
        np.zeros((28, 28), np.uint8),
        np.full((280, 280), 255, np.uint8),
        np.zeros((280, 280, 4), np.uint8),  # an untouched canvas: fully transparent
        np.full((50, 50, 3), 128, np.uint8),
        np.random.default_rng(0).integers(120, 140, (64, 64), dtype=np.uint8),  # faint noise
        np.zeros((3, 5), np.float32),
    ],
    ids=["black", "white", "transparent", "grey RGB", "faint noise", "tiny"],
)
def test_a_blank_image_is_refused(blank):
    with pytest.raises(NoInkError, match="no ink"):
        mnist_style(blank)


def test_a_single_dot_is_ink_and_fills_the_box():
    dot = np.zeros((50, 50), np.uint8)
    dot[10, 40] = 255
    out = mnist_style(dot)
    assert out.sum() > 0 and centre_of_mass(out) == pytest.approx((MNIST_CENTRE, MNIST_CENTRE), abs=0.5)
