import pytest
import torch
from torch import nn

from mnist_guide.data import shift_images
from mnist_guide.models import CNNConfig, MnistCNN, build_model, count_parameters, model_config


def test_the_course_cnn_maps_a_batch_of_digits_to_ten_logits():
    model = build_model().eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.features(torch.randn(2, 1, 28, 28)).shape == (2, 32, 5, 5)


def test_parameter_count_matches_the_layer_formulas():
    c = CNNConfig()
    conv1 = c.conv1_channels * 1 * 5 * 5  # no bias: BatchNorm follows
    bn1 = 2 * c.conv1_channels
    conv2 = c.conv2_channels * c.conv1_channels * 3 * 3
    bn2 = 2 * c.conv2_channels
    fc1 = c.conv2_channels * 5 * 5 * c.hidden_units + c.hidden_units
    fc2 = c.hidden_units * c.num_classes + c.num_classes
    assert count_parameters(build_model(c)) == conv1 + bn1 + conv2 + bn2 + fc1 + fc2 == 108_922


def test_count_parameters_can_skip_frozen_ones():
    model = build_model()
    for parameter in model.features.parameters():
        parameter.requires_grad_(False)
    assert count_parameters(model) < count_parameters(model, trainable_only=False) == 108_922


def test_build_model_accepts_the_dict_a_checkpoint_stores():
    config = CNNConfig(conv1_channels=8, conv2_channels=12, hidden_units=20, dropout=0.1)
    stored = model_config(MnistCNN(config))
    assert stored == {"class": "MnistCNN", "conv1_channels": 8, "conv2_channels": 12, "hidden_units": 20,
                      "dropout": 0.1, "num_classes": 10, "norm": "batch", "pool_first": False,
                      "test_shifts": False}
    stored.pop("class")
    assert build_model(stored).config == config


def test_model_config_names_a_foreign_module():
    assert model_config(nn.Linear(2, 3)) == {"class": "Linear"}


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    model = build_model().eval()
    images = torch.randn(4, 1, 28, 28)
    expected = model(images)
    model = model.to(memory_format=torch.channels_last)
    got = model(images.to(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-5)


def test_build_model_rejects_an_unknown_config_key_or_norm():
    with pytest.raises(TypeError):
        build_model({"conv1_channels": 8, "colour": "blue"})
    with pytest.raises(ValueError, match="norm must be one of"):
        CNNConfig(norm="layer")


def test_group_norm_makes_each_sample_independent_of_its_batch():
    torch.manual_seed(0)
    images = torch.randn(8, 1, 28, 28)
    for norm, independent in (("group", True), ("none", True), ("batch", False)):
        model = build_model(CNNConfig(norm=norm)).train()
        whole, halves = model(images), torch.cat([model(images[:4]), model(images[4:])])
        assert torch.allclose(whole, halves, atol=1e-5) == independent, norm


def test_without_normalisation_the_convolutions_get_their_bias_back():
    assert count_parameters(build_model(CNNConfig(norm="none"))) == 108_922 - 2 * (16 + 32) + 16 + 32


def test_pooling_first_is_the_same_network_without_normalisation():
    torch.manual_seed(0)
    usual = MnistCNN(CNNConfig(norm="none"))
    pooled_first = MnistCNN(CNNConfig(norm="none", pool_first=True))
    pooled_first.load_state_dict(usual.state_dict())  # the layers with weights sit at the same places in both orders
    images = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(pooled_first(images), usual(images))  # max-pooling commutes with ReLU
    assert [type(m).__name__ for m in pooled_first.features][:4] == ["Conv2d", "MaxPool2d", "Identity", "ReLU"]


def test_test_shifts_average_the_logits_of_five_shifted_views_in_eval_mode_only():
    torch.manual_seed(0)
    shifted = MnistCNN(CNNConfig(test_shifts=True))
    plain = MnistCNN()
    plain.load_state_dict(shifted.state_dict())
    images = torch.randn(6, 1, 28, 28)
    torch.testing.assert_close(shifted.train()(images), plain.train()(images))
    shifted.eval(), plain.eval()
    offsets = [(1, 1), (0, 1), (2, 1), (1, 0), (1, 2)]  # unmoved, then one pixel each way (shift_images' convention)
    views = [plain(shift_images(images, torch.tensor([offset] * 6), 1)) for offset in offsets]
    torch.testing.assert_close(shifted(images), torch.stack(views).mean(0))
