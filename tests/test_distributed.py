"""mnist_guide.distributed: shards, accumulation, rank-aware logs, and torchrun runs that match one process."""

import logging

import pytest
import torch
import torch.nn.functional as F
from small_runs import mnist_slice

from mnist_guide import distributed
from mnist_guide.distributed import (
    DistributedRecipe,
    RankFilter,
    World,
    accumulate_gradients,
    epoch_offsets,
    run_torchrun,
    shard_indices,
    shift_images,
    torchrun_command,
)
from mnist_guide.models import CNNConfig, GroupNormCNN, MnistCNN
from mnist_guide.training import load_checkpoint, read_checkpoint

SMALL = CNNConfig(conv1_channels=4, conv2_channels=8, hidden_units=16)

# -- the recipe and the command line ----------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"accumulate": 0}, "accumulate"),
        ({"max_steps": 0}, "max_steps"),
        ({"norm": "layer"}, "norm"),
        ({"dtype": "float16"}, "dtype"),
        ({"max_shift": -1}, "max_shift"),
    ],
)
def test_the_recipe_refuses_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        DistributedRecipe(**values)


def test_the_global_batch_must_split_evenly():
    recipe = DistributedRecipe(batch_size=256, accumulate=2)
    assert recipe.micro_batch_size(2) == 64
    with pytest.raises(ValueError, match="divisible by 6"):
        recipe.micro_batch_size(3)


def test_the_command_line_reports_a_batch_that_does_not_split(tmp_path, capsys):
    assert distributed.main(["--batch-size", "255", "--accumulate", "2", "--out", str(tmp_path)]) == 2
    assert "divisible by 2" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--max-steps", "-3"], ["--norm", "none"], ["--strategy", "zero"], []])
def test_the_command_line_refuses_bad_arguments(argv, tmp_path):
    out = [] if not argv else ["--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        distributed.main(argv + out)
    assert exit_info.value.code == 2


def test_torchrun_meets_on_the_loopback_address_with_one_thread_per_process():
    command, env = torchrun_command(["--out", "x"], nproc=2, port=29500)
    assert command[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node"]
    assert command[command.index("--master_addr") + 1] == "127.0.0.1"
    assert command[command.index("--master_port") + 1] == "29500"
    assert command[-4:] == ["-m", "mnist_guide.distributed", "--out", "x"]
    assert env["OMP_NUM_THREADS"] == "1"


# -- shards and augmentation ------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_are_disjoint_and_cover_the_data_set(world_size):
    shards = [shard_indices(60, World(rank=r, world_size=world_size), seed=0, epoch=1) for r in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1, "every process must take the same number of steps"
    together = torch.cat(shards)
    assert set(together.tolist()) == set(range(60)) and len(together) == 60


def test_the_shards_of_a_step_are_the_batch_of_one_process():
    alone = shard_indices(1000, World(), seed=0, epoch=0)
    halves = [shard_indices(1000, World(rank=r, world_size=2), seed=0, epoch=0) for r in range(2)]
    first_step = torch.cat([half[:64] for half in halves])
    assert sorted(first_step.tolist()) == sorted(alone[:128].tolist())


def test_each_epoch_shuffles_differently_and_repeatably():
    one = shard_indices(100, World(), seed=0, epoch=0)
    assert not torch.equal(one, shard_indices(100, World(), seed=0, epoch=1))
    assert torch.equal(one, shard_indices(100, World(), seed=0, epoch=0))


def test_augmentation_depends_on_the_sample_not_on_the_process():
    offsets = epoch_offsets(50, 1, seed=0, epoch=0)
    assert offsets.shape == (50, 2) and offsets.min() >= 0 and offsets.max() <= 2
    images = torch.randn(50, 1, 28, 28)
    index = torch.tensor([7, 3, 41])
    together = shift_images(images, offsets, 1)[index]
    alone = shift_images(images[index], offsets[index], 1)
    assert torch.equal(together, alone)


def test_a_shift_of_zero_leaves_the_images_alone_and_a_centre_offset_too():
    images = torch.randn(4, 1, 28, 28)
    assert shift_images(images, torch.zeros(4, 2, dtype=torch.long), 0) is images
    assert torch.equal(shift_images(images, torch.ones(4, 2, dtype=torch.long), 1), images)


# -- gradient accumulation --------------------------------------------------------------------


def _gradients(model):
    return [p.grad.clone() for p in model.parameters()]


def _whole_and_accumulated(model, images, labels, micro):
    """Gradients of one whole batch, then of the same batch accumulated over micro-batches."""
    F.cross_entropy(model(images), labels).backward()
    whole = _gradients(model)
    model.zero_grad()
    loss, correct = accumulate_gradients(model, list(zip(images.split(micro), labels.split(micro), strict=True)))
    return whole, _gradients(model), loss, correct


@pytest.mark.parametrize("micro", [32, 25, 100])  # 25 leaves a short last micro-batch
def test_accumulated_micro_batches_give_the_gradient_of_the_whole_batch(micro):
    images, labels = mnist_slice()[:2]
    images, labels = images[:100].double(), labels[:100]
    torch.manual_seed(0)
    model = GroupNormCNN(SMALL).double()
    whole, accumulated, loss, correct = _whole_and_accumulated(model, images, labels, micro)
    for expected, got in zip(whole, accumulated, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(F.cross_entropy(model(images), labels, reduction="sum").item(), rel=1e-9)
    assert 0 <= correct <= 100


def test_batchnorm_is_why_the_check_uses_groupnorm():
    images, labels = mnist_slice()[:2]
    images, labels = images[:128].double(), labels[:128]
    torch.manual_seed(0)
    model = MnistCNN(SMALL).double()
    whole, accumulated, _, _ = _whole_and_accumulated(model, images, labels, 64)
    difference = max((a - b).abs().max().item() for a, b in zip(whole, accumulated, strict=True))
    assert difference > 1e-4, "BatchNorm's batch statistics make half-batches compute another gradient"


# -- rank-aware logging -----------------------------------------------------------------------


def _record(message, **extra):
    record = logging.LogRecord("mnist_guide.distributed", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_only_rank_0_logs_unless_a_record_is_for_all_ranks():
    rank0, rank1 = RankFilter(0, 2), RankFilter(1, 2)
    assert rank0.filter(_record("step")) and not rank1.filter(_record("step"))
    shard = _record("my shard", all_ranks=True)
    assert rank1.filter(shard) and shard.rank_tag == "[rank 1/2]"
    warning = _record("slow")
    warning.levelno = logging.WARNING
    assert rank1.filter(warning)


# -- whole runs -------------------------------------------------------------------------------


def test_one_process_without_torchrun_writes_a_checkpoint(tmp_path, capsys):
    assert distributed.main(["--max-steps", "2", "--batch-size", "32", "--no-eval", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[rank 0/1]" in out and "wrote checkpoint.pt" in out
    model, checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert isinstance(model, MnistCNN) and checkpoint.extra["world_size"] == 1 and checkpoint.extra["steps"] == 2


@pytest.mark.slow
def test_torchrun_writes_one_checkpoint_of_the_course_model(tmp_path):
    done = run_torchrun(["--max-steps", "3", "--batch-size", "64", "--out", str(tmp_path)], nproc=2, timeout_s=300)
    assert done.stdout.count("my shard holds 30000 samples") == 2, done.stdout
    assert done.stdout.count("wrote checkpoint.pt") == 1, "only rank 0 writes"
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint.pt"]
    model, checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")  # one process, no process group
    assert isinstance(model, MnistCNN)
    assert checkpoint.extra["world_size"] == 2 and checkpoint.extra["steps"] == 3
    assert 0 <= checkpoint.history["test_accuracy"][0] <= 1
    assert checkpoint.optimizer_state is not None


@pytest.mark.slow
def test_two_processes_with_accumulation_reach_the_weights_of_one(tmp_path):
    """2 processes × 2 micro-batches of 16 take the same steps as 1 process with batches of 64."""
    steps, batch = 4, 64
    run_torchrun(
        ["--norm", "group", "--dtype", "float64", "--device", "cpu", "--max-steps", str(steps),
         "--batch-size", str(batch), "--accumulate", "2", "--no-eval", "--out", str(tmp_path)],
        nproc=2, timeout_s=300,
    )
    two = read_checkpoint(tmp_path / "checkpoint.pt")
    assert two.extra["world_size"] == 2 and two.extra["recipe"]["accumulate"] == 2
    one = distributed.train(
        DistributedRecipe(norm="group", dtype="float64", max_steps=steps, batch_size=batch),
        device="cpu", evaluate=False,
    )
    reference = one.model.state_dict()
    assert two.model_state.keys() == reference.keys()
    for name, expected in reference.items():
        torch.testing.assert_close(two.model_state[name], expected, rtol=0, atol=1e-9, msg=name)
    torch.manual_seed(0)  # the recipe's seed: the weights both runs started from
    initial = GroupNormCNN().double().state_dict()
    changed = max((reference[k] - initial[k]).abs().max() for k in reference)
    assert changed > 1e-3, "the runs must actually train for the comparison to mean something"
