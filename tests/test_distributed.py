"""mnist_guide.distributed: shards, augmentation by sample, rank-aware logs, and torchrun runs that match one process."""

import logging

import pytest
import torch
from small_runs import mnist_slice

from mnist_guide import cli, distributed
from mnist_guide.checkpoint import load_checkpoint, read_checkpoint
from mnist_guide.data import shift_images
from mnist_guide.distributed import (
    DistributedRecipe,
    RankFilter,
    World,
    epoch_offsets,
    run_torchrun,
    shard_indices,
)
from mnist_guide.models import CNNConfig, MnistCNN
from mnist_guide.training import train_step

# -- the recipe and the command line ----------------------------------------------------------


def test_the_global_batch_must_split_evenly():
    recipe = DistributedRecipe(batch_size=256, accumulate=2)
    assert recipe.micro_batch_size(2) == 64
    with pytest.raises(ValueError, match="divisible by 6"):
        recipe.micro_batch_size(3)


def test_the_command_line_reports_a_batch_that_does_not_split(tmp_path, capsys):
    assert cli.main(["train-parallel", "--batch-size", "255", "--accumulate", "2", "--out", str(tmp_path)]) == 2
    assert "divisible by 2" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--max-steps", "-3"], ["--norm", "none"], ["--strategy", "zero"],
                                  ["--max-shift", "9"]])
def test_the_command_line_refuses_bad_arguments(argv, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train-parallel", *argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2


def test_torchrun_meets_on_the_loopback_address_with_one_thread_per_process():
    command, env = distributed.torchrun_command(["--out", "x"], nproc=2, port=29500)
    assert command[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node"]
    assert command[command.index("--master_addr") + 1] == "127.0.0.1"
    assert command[command.index("--master_port") + 1] == "29500"
    assert command[-5:] == ["-m", "mnist_guide.cli", "train-parallel", "--out", "x"]
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


def test_batchnorm_is_why_the_equality_checks_use_groupnorm():
    """BatchNorm's batch statistics make a split batch compute another gradient: what GroupNorm avoids."""
    images, labels = (t[:128].clone() for t in mnist_slice()[:2])
    gradients = {}
    for norm in ("batch", "group"):
        for parts in (1, 2):
            torch.manual_seed(0)
            model = MnistCNN(CNNConfig(conv1_channels=4, conv2_channels=8, hidden_units=16, norm=norm)).double()
            train_step(model, list(zip(images.double().chunk(parts), labels.chunk(parts), strict=True)),
                       torch.optim.SGD(model.parameters(), lr=0.0))
            gradients[norm, parts] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert (gradients["batch", 1] - gradients["batch", 2]).abs().max() > 1e-4
    torch.testing.assert_close(gradients["group", 1], gradients["group", 2], rtol=1e-10, atol=1e-12)


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
    assert cli.main(["train-parallel", "--max-steps", "2", "--batch-size", "32", "--no-eval", "--out", str(tmp_path)]) == 0
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
        DistributedRecipe(model=CNNConfig(norm="group"), dtype="float64", max_steps=steps, batch_size=batch),
        device="cpu", evaluate_each_epoch=False,
    )
    reference = one.model.state_dict()
    assert two.model_state.keys() == reference.keys()
    for name, expected in reference.items():
        torch.testing.assert_close(two.model_state[name], expected, rtol=0, atol=1e-9, msg=name)
    torch.manual_seed(0)  # the recipe's seed: the weights both runs started from
    initial = MnistCNN(CNNConfig(norm="group")).double().state_dict()
    changed = max((reference[k] - initial[k]).abs().max() for k in reference)
    assert changed > 1e-3, "the runs must actually train for the comparison to mean something"
