"""The Vision Transformer: attention equal to its formula, parameters by formula, training, checkpoints, export."""

import math

import pytest
import torch
import torch.nn.functional as F
from small_runs import mnist_slice

from mnist_guide import export
from mnist_guide.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mnist_guide.data import TensorLoader
from mnist_guide.models import (
    CNNConfig,
    MnistCNN,
    MnistViT,
    SelfAttention,
    TransformerBlock,
    ViTConfig,
    build_model,
    count_parameters,
    model_config,
)
from mnist_guide.training import evaluate, fit

#: A ViT small enough to train in a test: 7 x 7 patches, width 32, two blocks.
TINY_VIT = ViTConfig(dim=32, depth=2, heads=2, mlp_dim=64)


def attention_by_hand(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v, with `mask` True where a query may look at a key."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def test_attention_by_hand_equals_sdpa_with_and_without_a_mask():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=generator) for _ in range(3))
    torch.testing.assert_close(attention_by_hand(q, k, v), F.scaled_dot_product_attention(q, k, v))
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    torch.testing.assert_close(attention_by_hand(q, k, v, causal), F.scaled_dot_product_attention(q, k, v, is_causal=True))
    random_mask = torch.rand(5, 5, generator=generator) > 0.5
    random_mask[:, 0] = True  # every query sees at least one key
    torch.testing.assert_close(
        attention_by_hand(q, k, v, random_mask), F.scaled_dot_product_attention(q, k, v, attn_mask=random_mask)
    )


def test_self_attention_is_its_projections_around_the_attention_formula():
    torch.manual_seed(0)
    attention = SelfAttention(dim=12, heads=3).eval()
    x = torch.randn(2, 7, 12)
    q, k, v = attention.project(x)
    assert q.shape == k.shape == v.shape == (2, 3, 7, 4)
    expected = attention.proj(attention_by_hand(q, k, v).transpose(1, 2).reshape(2, 7, 12))
    torch.testing.assert_close(attention(x), expected)


def test_parameter_count_matches_the_layer_formulas():
    c = ViTConfig()
    patches = (c.image_size // c.patch_size) ** 2
    block = (2 * 2 * c.dim  # two LayerNorms, a scale and a shift each
             + c.dim * 3 * c.dim + 3 * c.dim + c.dim * c.dim + c.dim  # qkv and output projection
             + c.dim * c.mlp_dim + c.mlp_dim + c.mlp_dim * c.dim + c.dim)  # the MLP
    embedding = c.patch_size**2 * c.dim + c.dim + c.dim + (patches + 1) * c.dim  # patches, class token, positions
    head = 2 * c.dim + c.dim * c.num_classes + c.num_classes
    assert count_parameters(MnistViT(c)) == embedding + c.depth * block + head
    assert sum(p.numel() for p in TransformerBlock(c.dim, c.heads, c.mlp_dim).parameters()) == block


def test_the_vit_maps_digits_to_logits_and_reads_the_class_token():
    torch.manual_seed(0)
    model = MnistViT(TINY_VIT).eval()
    images = torch.randn(3, 1, 28, 28)
    assert model.tokens(images).shape == (3, 17, 32)
    assert model(images).shape == (3, 10)


def test_build_model_builds_either_model_from_a_config_or_a_stored_dict():
    assert isinstance(build_model(TINY_VIT), MnistViT)
    assert isinstance(build_model(CNNConfig()), MnistCNN)
    stored = model_config(MnistViT(TINY_VIT))
    assert stored["class"] == "MnistViT"
    assert build_model(stored).config == TINY_VIT
    with pytest.raises(KeyError, match="Transformer9000"):
        build_model({"class": "Transformer9000"})


def test_a_tiny_vit_learns_with_the_course_fit():
    images, labels, test_images, test_labels = mnist_slice()
    torch.manual_seed(0)
    model = build_model(TINY_VIT)
    train_loader = TensorLoader(images, labels, 64, shuffle=True)
    test_loader = TensorLoader(test_images, test_labels, 256)
    before, _ = evaluate(model, test_loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = fit(model, train_loader, test_loader, epochs=2, optimizer=optimizer, progress=False)
    assert history.test_loss[-1] < 0.8 * before, f"test loss {before:.3f} -> {history.test_loss[-1]:.3f}"
    assert history.train_loss[1] < history.train_loss[0]
    assert history.test_accuracy[-1] > 0.3, "3 times chance after two epochs on 1,024 digits"


def test_a_vit_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    model = MnistViT(TINY_VIT).eval()
    path = save_checkpoint(tmp_path / "vit.pt", model, epoch=3)
    loaded, checkpoint = load_checkpoint(path)
    assert isinstance(loaded, MnistViT) and loaded.config == TINY_VIT and checkpoint.epoch == 3
    images = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(images), model(images), rtol=0, atol=0)


def test_loading_a_cnn_checkpoint_into_a_vit_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "cnn.pt", MnistCNN(), epoch=1)
    with pytest.raises(CheckpointError, match="holds a MnistCNN.*model given is a MnistViT"):
        load_checkpoint(path, MnistViT(TINY_VIT))
    vit_path = save_checkpoint(tmp_path / "vit.pt", MnistViT(TINY_VIT), epoch=1)
    with pytest.raises(CheckpointError, match="holds a MnistViT.*model given is a MnistCNN"):
        load_checkpoint(vit_path, MnistCNN())


def test_a_vit_checkpoint_with_a_foreign_config_says_so(tmp_path):
    path = save_checkpoint(tmp_path / "vit.pt", MnistViT(TINY_VIT), epoch=1)
    raw = torch.load(path, weights_only=True)
    raw["model_config"]["colour"] = "blue"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="cannot build"):
        load_checkpoint(path)


def test_the_vit_exports_with_a_dynamic_batch_and_keeps_parity():
    torch.manual_seed(0)
    deployable = export.make_deployable(MnistViT(TINY_VIT))
    program = export.export_program(deployable)
    for batch in (1, 5):
        pixels = export.example_pixels(batch)
        torch.testing.assert_close(program.module()(pixels), deployable(pixels), atol=export.PARITY_TOLERANCE, rtol=0)


@pytest.mark.parametrize("change", [{"patch_size": 5}, {"heads": 3}])
def test_a_config_that_would_drop_pixels_or_split_heads_unevenly_is_refused(change):
    with pytest.raises(ValueError, match="patch_size must divide 28"):
        ViTConfig(**change)
