"""mnist_guide.checkpoint: the round trip, and every way a checkpoint file can be wrong."""

import zipfile

import pytest
import torch
from torch import nn

from mnist_guide.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from mnist_guide.models import CNNConfig, build_model
from mnist_guide.training import History


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _trained_checkpoint(tmp_path, config=None):
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "model.pt", model, epoch=3, optimizer=optimizer,
                           history=History(test_accuracy=[0.5, 0.6, 0.7]))
    return model, optimizer, path


def test_round_trip_restores_weights_config_optimizer_and_versions(tmp_path):
    model, optimizer, path = _trained_checkpoint(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "the temporary file was renamed into place"
    assert path.stat().st_mode & 0o777 == 0o644
    loaded, checkpoint = load_checkpoint(path)
    assert _same_weights(loaded, model)
    assert checkpoint.epoch == 3 and checkpoint.model_config["class"] == "MnistCNN"
    assert checkpoint.versions["torch"] == str(torch.__version__)
    assert History(**checkpoint.history).test_accuracy == [0.5, 0.6, 0.7]
    fresh = build_model()
    fresh_optimizer = torch.optim.Adam(fresh.parameters())
    load_checkpoint(path, fresh, optimizer=fresh_optimizer)
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_the_normalisation_layer_is_rebuilt_from_the_config(tmp_path):
    path = save_checkpoint(tmp_path / "group.pt", build_model(CNNConfig(norm="group")), epoch=1)
    model, _ = load_checkpoint(path)
    assert isinstance(model.features[1], nn.GroupNorm)


def test_loading_into_a_model_of_another_shape_or_class_says_so(tmp_path):
    _, _, path = _trained_checkpoint(tmp_path, CNNConfig(conv1_channels=8))
    with pytest.raises(CheckpointError, match=r"conv1_channels.: 8.*but the model given.*conv1_channels.: 16"):
        load_checkpoint(path, build_model())
    with pytest.raises(CheckpointError, match="holds a MnistCNN.*the model given is a Linear"):
        load_checkpoint(path, nn.Linear(784, 10))


def test_a_checkpoint_of_a_class_the_course_cannot_build_needs_that_model(tmp_path):
    path = save_checkpoint(tmp_path / "linear.pt", nn.Linear(784, 10), epoch=1)
    with pytest.raises(CheckpointError, match="cannot build"):
        load_checkpoint(path)
    model, _ = load_checkpoint(path, nn.Linear(784, 10))
    assert isinstance(model, nn.Linear)


def test_nonsense_inside_the_config_is_one_clear_error(tmp_path):
    model, _, path = _trained_checkpoint(tmp_path)
    raw = torch.load(path, weights_only=True)
    for bad in ({"conv1_channels": -3}, {"colour": "blue"}, {"norm": "sometimes"}):
        raw["model_config"] = {"class": "MnistCNN", **bad}
        torch.save(raw, path)
        with pytest.raises(CheckpointError, match="cannot build"):
            load_checkpoint(path)


def test_truncated_garbage_missing_and_foreign_files_raise_checkpoint_error(tmp_path):
    _, _, path = _trained_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable archive"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable archive"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such checkpoint.*mnist-guide train"):
        read_checkpoint(tmp_path / "missing.pt")
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not an mnist-guide checkpoint"):
        read_checkpoint(path)


def test_flipped_bits_in_a_weight_are_refused(tmp_path):
    _, _, path = _trained_checkpoint(tmp_path)
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)  # the largest tensor's bytes
    data = bytearray(path.read_bytes())
    start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    for offset in range(start + 64, start + 64 + 100):
        data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC"):
        load_checkpoint(path)


def test_weights_that_are_not_finite_are_refused(tmp_path):
    model = build_model()
    with torch.no_grad():
        model.classifier[1].weight[0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.pt", model, epoch=1)
    with pytest.raises(CheckpointError, match="not finite"):
        load_checkpoint(path)


def test_resuming_needs_the_optimizer_state(tmp_path):
    path = save_checkpoint(tmp_path / "weights_only.pt", build_model(), epoch=1)
    model = build_model()
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, model, optimizer=torch.optim.Adam(model.parameters()))


def test_a_failed_save_leaves_the_previous_file_intact_and_no_temporary(tmp_path, monkeypatch):
    model, _, path = _trained_checkpoint(tmp_path)
    before = path.read_bytes()

    def full_disk(obj, temporary):
        temporary.write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model, epoch=4)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
