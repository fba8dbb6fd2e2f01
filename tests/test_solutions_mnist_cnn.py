"""The reference solutions of notebooks/07_mnist_cnn.ipynb agree with the layers they describe."""

import pytest
import torch
from torch import nn

from mnist_guide.models import CNNConfig, MnistCNN, count_parameters
from mnist_guide.solutions import mnist_cnn


@pytest.mark.parametrize("size, kernel, stride, padding", [(28, 5, 1, 0), (12, 3, 1, 0), (28, 3, 1, 1), (28, 3, 2, 0), (27, 4, 3, 2), (5, 5, 1, 0)])
def test_conv_output_size_matches_conv2d_and_max_pool(size, kernel, stride, padding):
    image = torch.zeros(1, 1, size, size)
    assert mnist_cnn.conv_output_size(size, kernel, stride, padding) == nn.Conv2d(1, 1, kernel, stride, padding)(image).shape[-1]
    if padding <= kernel // 2:
        assert mnist_cnn.conv_output_size(size, kernel, stride, padding) == nn.MaxPool2d(kernel, stride, padding)(image).shape[-1]


@pytest.mark.parametrize("in_channels, out_channels, kernel, bias", [(1, 16, 5, False), (16, 32, 3, False), (3, 64, 7, True), (32, 32, 1, True)])
def test_conv_parameters_matches_conv2d(in_channels, out_channels, kernel, bias):
    layer = nn.Conv2d(in_channels, out_channels, kernel, bias=bias)
    assert mnist_cnn.conv_parameters(in_channels, out_channels, kernel, bias) == count_parameters(layer)


def test_predict_digit_reads_as_the_model_in_eval_mode_whatever_mode_it_is_in():
    torch.manual_seed(0)
    model = MnistCNN(CNNConfig())
    images = torch.randn(6, 1, 28, 28)
    model.train()
    model(torch.randn(64, 1, 28, 28))  # move the running statistics away from their start
    with torch.no_grad():
        expected = model.eval()(images).argmax(dim=1).tolist()
    model.train()
    got = [mnist_cnn.predict_digit(model, image) for image in images]
    assert got == expected and all(type(digit) is int for digit in got)
    assert not model.training
