"""The reference solutions of notebooks/12_transformers.ipynb agree with the ViT and with SDPA."""

import pytest
import torch
import torch.nn.functional as F

from mnist_guide.models import MnistViT, ViTConfig, count_parameters
from mnist_guide.solutions import transformers


@pytest.mark.parametrize("patch_size", [4, 7, 14])
def test_patchify_then_a_linear_layer_is_the_patch_embedding(patch_size):
    torch.manual_seed(0)
    model = MnistViT(ViTConfig(patch_size=patch_size, dim=16, depth=1, heads=2, mlp_dim=32))
    images = torch.randn(3, 1, 28, 28)
    conv = model.patch_embedding
    by_hand = transformers.patchify(images, patch_size) @ conv.weight.flatten(1).T + conv.bias
    torch.testing.assert_close(by_hand, conv(images).flatten(2).transpose(1, 2))


def test_patchify_keeps_each_patch_together_and_refuses_a_ragged_grid():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    patches = transformers.patchify(images, 2)
    assert patches.shape == (2, 4, 12)
    torch.testing.assert_close(patches[1, 3], images[1, :, 2:, 2:].flatten())
    with pytest.raises(ValueError, match="must divide"):
        transformers.patchify(images, 3)


@pytest.mark.parametrize(
    "config",
    [ViTConfig(), ViTConfig(patch_size=4, dim=32, depth=2, heads=2, mlp_dim=96, num_classes=5), ViTConfig(depth=0)],
)
def test_vit_parameter_count_matches_the_model(config):
    assert transformers.vit_parameter_count(config) == count_parameters(MnistViT(config))


def test_local_attention_mask_limits_what_each_token_sees():
    mask = transformers.local_attention_mask(6, 1)
    assert mask.dtype == torch.bool and mask.shape == (6, 6)
    assert mask.sum(dim=1).tolist() == [2, 3, 3, 3, 3, 2]
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    v_far = v.clone()
    v_far[..., 5, :] += 100.0  # token 5 is out of token 0's window
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v_far, attn_mask=mask)[..., 0, :], out[..., 0, :])
    assert transformers.local_attention_mask(4, 10).all()
    with pytest.raises(ValueError, match="at least 0"):
        transformers.local_attention_mask(4, -1)
