import json
from dataclasses import replace

import pytest
import torch
from small_runs import TINY, mnist_slice, use_mnist_slice
from torch import nn

from mnist_guide import training
from mnist_guide.data import MNIST_MEAN, MNIST_STD, TensorLoader
from mnist_guide.models import CNNConfig, build_model
from mnist_guide.training import (
    CheckpointError,
    History,
    evaluate,
    fit,
    load_checkpoint,
    random_shift,
    read_checkpoint,
    save_checkpoint,
    save_course_checkpoint,
    train_course_model,
    write_metrics,
)


@pytest.fixture
def small(monkeypatch):
    use_mnist_slice(monkeypatch)


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


# -- checkpoints ------------------------------------------------------------------------------


def test_checkpoint_round_trip_restores_weights_config_optimizer_and_versions(tmp_path):
    model, optimizer, path = _trained_checkpoint(tmp_path)
    assert not list(tmp_path.glob("*.tmp")), "the temporary file was renamed into place"
    loaded, checkpoint = load_checkpoint(path)
    assert _same_weights(loaded, model)
    assert checkpoint.epoch == 3 and checkpoint.model_config["class"] == "MnistCNN"
    assert checkpoint.versions["torch"] == str(torch.__version__)
    assert History.from_dict(checkpoint.history).test_accuracy == [0.5, 0.6, 0.7]
    fresh = build_model()
    fresh_optimizer = torch.optim.Adam(fresh.parameters())
    load_checkpoint(path, fresh, optimizer=fresh_optimizer)
    assert _same_weights(fresh, model)
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    raw = torch.load(path, weights_only=True)  # plain data only: safe to load
    assert {"model_state", "model_config", "optimizer_state", "epoch", "versions"} <= raw.keys()


def test_loading_into_a_model_of_another_shape_says_so(tmp_path):
    _, _, path = _trained_checkpoint(tmp_path, CNNConfig(conv1_channels=8))
    with pytest.raises(CheckpointError, match=r"conv1_channels.: 8.*but the model given.*conv1_channels.: 16"):
        load_checkpoint(path, build_model())


def test_loading_into_a_model_of_another_class_says_so(tmp_path):
    _, _, path = _trained_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="holds a MnistCNN.*model given is a Linear"):
        load_checkpoint(path, nn.Linear(784, 10))


def test_a_checkpoint_of_another_class_needs_that_model(tmp_path):
    path = save_checkpoint(tmp_path / "linear.pt", nn.Linear(784, 10), epoch=1)
    with pytest.raises(CheckpointError, match="holds a Linear; pass a model of that class"):
        load_checkpoint(path)
    model, _ = load_checkpoint(path, nn.Linear(784, 10))
    assert isinstance(model, nn.Linear)


def test_a_truncated_checkpoint_raises_checkpoint_error(tmp_path):
    _, _, path = _trained_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_garbage_missing_and_foreign_files_raise_checkpoint_error(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="no such checkpoint.*mnist-guide train"):
        read_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), foreign)
    with pytest.raises(CheckpointError, match="not an mnist-guide checkpoint"):
        read_checkpoint(foreign)


def test_resuming_needs_the_optimizer_state(tmp_path):
    path = save_checkpoint(tmp_path / "weights_only.pt", build_model(), epoch=1)
    model = build_model()
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, model, optimizer=torch.optim.Adam(model.parameters()))


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    model, _, path = _trained_checkpoint(tmp_path)
    before = path.read_bytes()

    def broken_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(training.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, epoch=4)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


# -- the training loop ------------------------------------------------------------------------


def test_evaluate_counts_every_sample():
    images, labels = torch.zeros(10, 1, 28, 28), torch.tensor([0] * 7 + [1] * 3)

    class AlwaysZero(nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0.0]]).repeat(len(x), 1)

    loss, accuracy = evaluate(AlwaysZero(), TensorLoader(images, labels, batch_size=4))
    assert accuracy == pytest.approx(0.7)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(torch.tensor([[1.0, 0.0]] * 10), labels).item())


def test_fit_records_one_entry_per_epoch_and_learns(small):
    images, labels, test_images, test_labels = mnist_slice()
    torch.manual_seed(0)
    model = build_model(TINY.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = fit(model, TensorLoader(images, labels, 128, shuffle=True), TensorLoader(test_images, test_labels, 256),
                  epochs=3, optimizer=optimizer, progress=False)
    assert history.epochs == 3 and len(history.train_loss) == len(history.epoch_seconds) == 3
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.test_accuracy[-1] > 0.5


def test_fit_rejects_an_unknown_scheduler_step():
    model = build_model(TINY.model)
    with pytest.raises(ValueError, match="scheduler_step"):
        fit(model, [], [], epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), scheduler_step="sometimes")


def test_history_survives_a_dict_round_trip():
    history = History(train_loss=[1.0, 0.5], test_accuracy=[0.9, 0.95])
    assert History.from_dict(history.to_dict()) == history
    assert History.from_dict({"test_accuracy": [0.9]}).epochs == 1


def test_random_shift_moves_digits_by_at_most_one_pixel_and_repeats_with_the_seed():
    images, *_ = mnist_slice()
    batch = images[:64]
    shift = random_shift(1)
    first = shift(batch, torch.Generator().manual_seed(3))
    assert first.shape == batch.shape
    assert torch.equal(first, shift(batch, torch.Generator().manual_seed(3)))
    padded = torch.nn.functional.pad(batch, (1, 1, 1, 1), value=(0.0 - MNIST_MEAN) / MNIST_STD)
    for image, moved in zip(padded, first, strict=True):
        assert any(torch.equal(image[:, dy:dy + 28, dx:dx + 28], moved) for dy in range(3) for dx in range(3))


# -- the course recipe ------------------------------------------------------------------------


def test_same_seed_same_run(small):
    first = train_course_model(TINY, device="cpu", progress=False)
    second = train_course_model(TINY, device="cpu", progress=False)
    assert _same_weights(first.model, second.model)
    assert first.history.test_accuracy == second.history.test_accuracy
    other = train_course_model(replace(TINY, seed=1), device="cpu", progress=False)
    assert not _same_weights(first.model, other.model)


def test_resumed_training_reaches_the_same_weights_as_one_unbroken_run(small, tmp_path):
    recipe = replace(TINY, epochs=3)
    straight = train_course_model(recipe, device="cpu", out=tmp_path / "straight", progress=False)
    train_course_model(recipe, device="cpu", out=tmp_path / "broken", epochs=1, progress=False)
    assert read_checkpoint(tmp_path / "broken" / "checkpoint.pt").epoch == 1
    resumed = train_course_model(recipe, device="cpu", out=tmp_path / "broken", resume=True, progress=False)
    assert _same_weights(resumed.model, straight.model)
    assert resumed.history.to_dict()["test_accuracy"] == straight.history.test_accuracy
    assert read_checkpoint(tmp_path / "broken" / "checkpoint.pt").epoch == 3


def test_resuming_with_another_recipe_is_refused(small, tmp_path):
    train_course_model(TINY, device="cpu", out=tmp_path, epochs=1, progress=False)
    with pytest.raises(CheckpointError, match="another recipe.*max_lr 0.01 there, 0.02 here"):
        train_course_model(replace(TINY, max_lr=0.02), device="cpu", out=tmp_path, resume=True, progress=False)


def test_resume_needs_an_output_folder():
    with pytest.raises(ValueError, match="resume=True needs `out`"):
        train_course_model(TINY, device="cpu", resume=True, progress=False)


def test_metrics_and_course_checkpoint_of_a_run(small, tmp_path):
    run = train_course_model(TINY, device="cpu", progress=False)
    metrics = write_metrics(tmp_path / "metrics.json", run, TINY)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics
    assert {"test_accuracy", "test_loss", "epochs", "train_seconds", "seed", "versions"} <= on_disk.keys()
    assert on_disk["test_accuracy"] == run.history.test_accuracy[-1] and on_disk["epochs"] == 2
    path = save_course_checkpoint(run, TINY, tmp_path / "course.pt")
    model, checkpoint = load_checkpoint(path)
    assert _same_weights(model, run.model)
    assert checkpoint.optimizer_state is not None and checkpoint.extra["recipe"]["epochs"] == 2
