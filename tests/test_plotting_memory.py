"""plot_memory_per_device: stacked bars of what one device holds, and the device's memory as a line."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mnist_guide.plotting import plot_memory_per_device  # noqa: E402


def test_bars_stack_the_parts_in_the_unit_asked_and_the_capacity_is_drawn():
    bars = {"DDP": {"weights": 4e9, "gradients": 4e9, "Adam": 8e9}, "FSDP on 8": {"weights": 0.5e9, "gradients": 0.5e9, "Adam": 1e9}}
    figure = plot_memory_per_device(bars, capacity=10e9, unit="GB")
    ax = figure.axes[0]
    tops = [patch.get_y() + patch.get_height() for patch in ax.patches]
    assert max(tops) == pytest.approx(16.0) and sorted(tops)[:1] == [pytest.approx(0.5)]
    assert [line.get_ydata()[0] for line in ax.get_lines()] == [pytest.approx(10.0)]
    assert [text.get_text() for text in ax.texts] == ["16.0", "2.0"]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["DDP", "FSDP on 8"]
    plt.close(figure)


def test_a_part_missing_from_a_setting_counts_as_zero():
    figure = plot_memory_per_device({"a": {"x": 2**30}, "b": {"y": 2**31}}, unit="GiB")
    assert [text.get_text() for text in figure.axes[0].texts] == ["1.0", "2.0"]
    plt.close(figure)
