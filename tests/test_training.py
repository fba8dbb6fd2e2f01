import json
from dataclasses import replace

import pytest
import torch
from small_runs import TINY, mnist_slice
from torch import nn

from mnist_guide.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from mnist_guide.data import MNIST_MEAN, MNIST_STD, TensorLoader, random_shift
from mnist_guide.models import build_model
from mnist_guide.training import (
    FAST_RECIPE,
    RECORD_RECIPE,
    Recipe,
    WeightAverage,
    evaluate,
    fit,
    save_course_checkpoint,
    train_course_model,
    train_one_epoch,
    train_step,
    write_metrics,
)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the training loop ------------------------------------------------------------------------


def test_evaluate_counts_every_sample():
    images, labels = torch.zeros(10, 1, 28, 28), torch.tensor([0] * 7 + [1] * 3)

    class AlwaysZero(nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0.0]]).repeat(len(x), 1)

    loss, accuracy = evaluate(AlwaysZero(), TensorLoader(images, labels, batch_size=4))
    assert accuracy == pytest.approx(0.7)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(torch.tensor([[1.0, 0.0]] * 10), labels).item())


def test_fit_records_one_entry_per_epoch_and_learns():
    images, labels, test_images, test_labels = mnist_slice()
    torch.manual_seed(0)
    model = build_model(TINY.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = fit(model, TensorLoader(images, labels, 128, shuffle=True), TensorLoader(test_images, test_labels, 256),
                  epochs=3, optimizer=optimizer, progress=False)
    assert history.epochs == 3 and len(history.train_loss) == len(history.epoch_seconds) == 3
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.test_accuracy[-1] > 0.5


@pytest.mark.parametrize("accumulate", [2, 3])
def test_an_epoch_in_micro_batches_takes_the_steps_of_whole_batches(accumulate):
    """GroupNorm in float64: the step does not depend on how a batch is split, so weights must agree."""
    images, labels = (t[:200] for t in mnist_slice()[:2])
    runs = []
    for parts in (1, accumulate):
        torch.manual_seed(0)
        model = build_model(replace(TINY.model, norm="group")).double()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss, accuracy = train_one_epoch(model, TensorLoader(images.double(), labels, 64), optimizer, accumulate=parts)
        runs.append((model, loss, accuracy))
    (whole, loss, accuracy), (split, split_loss, split_accuracy) = runs
    for a, b in zip(whole.parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert split_loss == pytest.approx(loss, rel=1e-10) and split_accuracy == accuracy


def test_a_step_with_label_smoothing_follows_the_smoothed_loss():
    images, labels = (t[:32] for t in mnist_slice()[:2])
    torch.manual_seed(0)
    model = build_model(TINY.model)
    expected = torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=0.1) * len(labels)
    loss, _, samples = train_step(model, [(images, labels)], torch.optim.SGD(model.parameters(), lr=0.0), 0.1)
    torch.testing.assert_close(loss, expected.detach())
    assert samples == 32 and not torch.isclose(loss, torch.nn.functional.cross_entropy(model(images), labels) * 32)


def test_a_run_on_a_fraction_of_each_epoch_takes_that_share_of_the_steps():
    recipe = replace(TINY, epochs=1, epoch_fraction=0.5, label_smoothing=0.1, model=replace(TINY.model, pool_first=True))
    run = train_course_model(recipe, device="cpu", data=mnist_slice(), progress=False)
    assert run.scheduler.total_steps == run.scheduler.last_epoch == 4  # half of 1,024 images in batches of 128
    assert run.history.epochs == 1 and run.model.features[1].__class__.__name__ == "MaxPool2d"


def test_the_fast_recipe_trains_part_of_one_epoch_with_the_cheaper_network():
    assert FAST_RECIPE.epochs == 1 and FAST_RECIPE.epoch_fraction < 1 and FAST_RECIPE.model.pool_first


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


def test_the_record_recipe_trains_longer_with_dropout():
    assert RECORD_RECIPE.epochs > Recipe().epochs and RECORD_RECIPE.model.dropout > 0


# -- the course recipe ------------------------------------------------------------------------


def test_same_seed_same_run():
    first = train_course_model(TINY, device="cpu", data=mnist_slice(), progress=False)
    second = train_course_model(TINY, device="cpu", data=mnist_slice(), progress=False)
    assert _same_weights(first.model, second.model)
    assert first.history.test_accuracy == second.history.test_accuracy
    other = train_course_model(replace(TINY, seed=1), device="cpu", data=mnist_slice(), progress=False)
    assert not _same_weights(first.model, other.model)


#: TINY with every ingredient of the record recipe: affine maps, a weight average, pooling first, shifted test views.
TINY_RECORD = replace(TINY, max_shift=2, max_degrees=10.0, max_scale=0.1, weight_average=0.9, label_smoothing=0.1,
                      model=replace(TINY.model, dropout=0.25, pool_first=True, test_shifts=True))


@pytest.mark.parametrize("base", [TINY, TINY_RECORD], ids=["course", "record"])
def test_resumed_training_reaches_the_same_weights_as_one_unbroken_run(base, tmp_path):
    recipe = replace(base, epochs=3)
    straight = train_course_model(recipe, device="cpu", out=tmp_path / "straight", data=mnist_slice(), progress=False)
    train_course_model(recipe, device="cpu", out=tmp_path / "broken", epochs=1, data=mnist_slice(), progress=False)
    assert read_checkpoint(tmp_path / "broken" / "checkpoint.pt").epoch == 1
    resumed = train_course_model(recipe, device="cpu", out=tmp_path / "broken", resume=True, data=mnist_slice(),
                                 progress=False)
    assert _same_weights(resumed.model, straight.model)
    assert resumed.history.test_accuracy == straight.history.test_accuracy
    assert len(resumed.history.epoch_seconds) == 3, "training seconds count the epochs before the resume too"
    assert read_checkpoint(tmp_path / "broken" / "checkpoint.pt").epoch == 3


def test_resuming_with_another_recipe_is_refused(tmp_path):
    train_course_model(TINY, device="cpu", out=tmp_path, epochs=1, data=mnist_slice(), progress=False)
    with pytest.raises(CheckpointError, match="another recipe.*'max_lr': 0.01"):
        train_course_model(replace(TINY, max_lr=0.02), device="cpu", out=tmp_path, resume=True, data=mnist_slice(),
                           progress=False)


def test_resuming_a_checkpoint_whose_history_is_not_a_history_is_refused(tmp_path):
    train_course_model(TINY, device="cpu", out=tmp_path, epochs=1, data=mnist_slice(), progress=False)
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    raw["history"] = {"loss": [1.0]}
    torch.save(raw, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="its history \\(loss\\) is not a training history"):
        train_course_model(TINY, device="cpu", out=tmp_path, resume=True, data=mnist_slice(), progress=False)


def test_resuming_an_averaged_run_without_its_trained_weights_is_refused(tmp_path):
    train_course_model(TINY_RECORD, device="cpu", out=tmp_path, epochs=1, data=mnist_slice(), progress=False)
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del raw["extra"]["trained_state"]
    torch.save(raw, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="cannot resume: the trained weights behind its average"):
        train_course_model(TINY_RECORD, device="cpu", out=tmp_path, resume=True, data=mnist_slice(), progress=False)


def test_the_weight_average_moves_a_step_of_one_minus_decay_and_is_what_is_saved(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY.model)
    average = WeightAverage(model, decay=0.75)
    before = {key: value.clone() for key, value in average.model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    average.update()
    for key, value in average.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * before[key] + 0.25 * model.state_dict()[key])
    assert average.steps == 1 and not any(p.requires_grad for p in average.model.parameters())
    run = train_course_model(replace(TINY_RECORD, epochs=1), device="cpu", data=mnist_slice(), progress=False)
    assert run.model is run.average.model and not _same_weights(run.model, run.average.source)
    model, checkpoint = load_checkpoint(save_course_checkpoint(run, TINY_RECORD, tmp_path / "record.pt"))
    assert _same_weights(model, run.model) and checkpoint.extra["average_steps"] == run.average.steps


def test_metrics_and_course_checkpoint_of_a_run(tmp_path):
    run = train_course_model(TINY, device="cpu", data=mnist_slice(), progress=False)
    metrics = write_metrics(tmp_path / "metrics.json", run, TINY)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics
    assert {"test_accuracy", "test_loss", "epochs", "train_seconds", "seed", "versions"} <= on_disk.keys()
    assert on_disk["test_accuracy"] == run.history.test_accuracy[-1] and on_disk["epochs"] == 2
    path = save_course_checkpoint(run, TINY, tmp_path / "course.pt")
    model, checkpoint = load_checkpoint(path)
    assert _same_weights(model, run.model)
    assert checkpoint.optimizer_state is not None and checkpoint.extra["recipe"]["epochs"] == 2
