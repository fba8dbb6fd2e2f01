"""mnist_guide.plotting: digit titles say label / prediction (red when wrong); image rows draw what they are given."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mnist_guide.plotting import plot_digit_grid, plot_image_rows  # noqa: E402


def test_digit_grid_titles_each_digit_and_marks_mistakes_red():
    figure = plot_digit_grid(torch.rand(3, 1, 28, 28), [1, 2, 3], [1, 5, 3], ncols=2, title="t")
    titles = [(ax.get_title(), ax.title.get_color()) for ax in figure.axes if ax.get_title()]
    assert titles == [("1 / pred 1", "black"), ("2 / pred 5", "crimson"), ("3 / pred 3", "black")]
    assert figure.get_suptitle() == "t"
    plt.close(figure)


def test_image_rows_returns_its_titled_figure_with_a_checkerboard_behind_colour():
    rgba = torch.zeros(2, 40, 40, 4, dtype=torch.uint8)
    figure = plot_image_rows({"drawn": list(rgba), "grey": torch.rand(2, 28, 28)}, [7, 1], {"grey": [7, 2]}, title="t")
    assert figure.get_suptitle() == "t"
    assert [len(ax.images) for ax in figure.axes] == [2, 2, 1, 1], "colour images over a checkerboard"
    assert [ax.get_title() for ax in figure.axes] == ["7", "1", "7 / pred 7", "1 / pred 2"]
    plt.close(figure)
