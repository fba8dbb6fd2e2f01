"""Data-parallel training with `torchrun`, built on `training`: each process its shard, DDP or FSDP, one checkpoint.

Run by `mnist-guide train-parallel` under torchrun; without torchrun it trains alone, the same way (the reference).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from mnist_guide import training
from mnist_guide.checkpoint import save_checkpoint
from mnist_guide.data import MnistSplits, TensorLoader, mnist_tensors, random_offsets, shift_images
from mnist_guide.models import build_model
from mnist_guide.runtime import free_port, pick_device

logger = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class DistributedRecipe(training.Recipe):
    """The course recipe for any number of processes: `batch_size` is the global batch over processes and micro-batches.

    `max_steps` stops early (the schedule spans the steps that run); `dtype="float64"` compares runs exactly.
    """

    epochs: int = 1
    accumulate: int = 1
    max_steps: int | None = None
    dtype: str = "float32"

    def micro_batch_size(self, world_size: int) -> int:
        """Samples per forward pass on each process; the global batch must split evenly."""
        if self.batch_size % (world_size * self.accumulate):
            raise ValueError(f"the global batch of {self.batch_size} does not split into {world_size} processes × "
                             f"{self.accumulate} micro-batches; pick a batch size divisible by {world_size * self.accumulate}")
        return self.batch_size // (world_size * self.accumulate)


@dataclass(frozen=True)
class World:
    """Who this process is: its rank among `world_size`, its device, and its backend (`None` when alone)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (unchanged for a process alone)."""
        if self.backend is not None:
            tensor = tensor.to(self.device)
            dist.all_reduce(tensor)
        return tensor.cpu()


def init_world(device: str | torch.device | None = None) -> World:
    """Join torchrun's process group, or stay alone: NCCL with a GPU per process when there are enough, else gloo."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    chosen = pick_device(device)
    if chosen.type == "cuda" and torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", world_size)):
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    elif chosen.type != "cpu":
        chosen = torch.device("cpu")  # too few GPUs for one each, or MPS (no backend)
    if "RANK" not in os.environ:
        return World(device=chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=5),
                                device_id=chosen if chosen.type == "cuda" else None)
    return World(rank, world_size, chosen, backend)


class RankFilter(logging.Filter):
    """Tag records `[rank r/w]`; let through rank 0's, warnings, and records marked `extra={"all_ranks": True}`."""

    def __init__(self, rank: int, world_size: int) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_tag = f"[rank {self.rank}/{self.world_size}]"
        return self.rank == 0 or getattr(record, "all_ranks", False) or record.levelno >= logging.WARNING


def shard_indices(dataset_size: int, world: World, *, seed: int, epoch: int) -> torch.Tensor:
    """This process's sample indices for `epoch` from a `DistributedSampler`: disjoint shards of one shuffle."""
    sampler = DistributedSampler(range(dataset_size), num_replicas=world.world_size, rank=world.rank, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def epoch_offsets(count: int, max_shift: int, seed: int, epoch: int) -> torch.Tensor:
    """Every sample's shift for `epoch`, drawn for the whole data set: the same whichever process takes the sample."""
    return random_offsets(count, max_shift, torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def wrap_model(model: nn.Module, world: World, strategy: str = "ddp") -> nn.Module:
    """DDP keeps a full copy of `model` per process, FSDP shards it; a process alone gets it back unchanged."""
    if world.backend is None:
        return model
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(world.device.type, (world.world_size,))
    for block in (model.features, model.classifier):
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _shard_batches(images, labels, indices, offsets, recipe: DistributedRecipe, world: World) -> Iterator:
    """This process's part of each global batch, augmented by sample index, in the recipe's dtype."""
    per_step = recipe.micro_batch_size(world.world_size) * recipe.accumulate
    for step in indices.split(per_step):
        x = shift_images(images[step], offsets[step], recipe.max_shift) if recipe.max_shift else images[step]
        yield x.to(DTYPES[recipe.dtype]), labels[step]


def _log_steps(batches: Iterator, optimizer: torch.optim.Optimizer, first: int, total: int, every: int) -> Iterator:
    """Pass the batches through, logging every `every`-th finished step (rank 0's log shows progress)."""
    for step, batch in enumerate(batches, first + 1):
        yield batch
        if step % every == 0 or step == total:
            logger.info(f"step {step}/{total}: learning rate {optimizer.param_groups[0]['lr']:.5f}")


def train(
    recipe: DistributedRecipe | None = None, *, out: str | Path | None = None,
    device: str | torch.device | None = None, strategy: str = "ddp", data: MnistSplits | None = None,
    evaluate_each_epoch: bool = True, log_every: int = 50
) -> training.TrainingRun:
    """Train with `recipe` in every process (or alone) by `training.train_one_epoch`; rank 0 writes the checkpoint."""
    recipe = recipe or DistributedRecipe()
    world = init_world(device)
    train_images, train_labels, test_images, test_labels = data or (*mnist_tensors(True), *mnist_tensors(False))
    per_epoch = math.ceil(math.ceil(len(train_images) / world.world_size) / (recipe.batch_size // world.world_size))
    total_steps = min(recipe.max_steps or per_epoch * recipe.epochs, per_epoch * recipe.epochs)
    torch.manual_seed(recipe.seed)  # the same initial weights in every process
    memory_format = torch.channels_last if strategy == "ddp" and recipe.channels_last else torch.contiguous_format
    model = build_model(recipe.model).to(world.device, DTYPES[recipe.dtype], memory_format=memory_format)
    parallel = wrap_model(model, world, strategy)
    optimizer = training.make_optimizer(parallel, recipe)
    scheduler = training.make_scheduler(optimizer, recipe, per_epoch, total_steps)
    logger.info(f"{world.world_size} process(es), backend {world.backend or 'none'} on {world.device.type}; global batch "
                f"{recipe.batch_size} = {world.world_size} × {recipe.accumulate} micro-batch(es) × "
                f"{recipe.micro_batch_size(world.world_size)}; {total_steps} steps")
    held = sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in parallel.parameters())
    logger.info(f"I hold {held:,} of the model's {sum(p.numel() for p in model.parameters()):,} parameters",
                extra={"all_ranks": True})
    test_shard = torch.arange(world.rank, len(test_images), world.world_size)
    test_loader = TensorLoader(test_images[test_shard].to(DTYPES[recipe.dtype]), test_labels[test_shard], 1000)
    history, steps = training.History(), 0
    for epoch in range(recipe.epochs):
        indices = shard_indices(len(train_images), world, seed=recipe.seed, epoch=epoch)
        logger.info(f"epoch {epoch + 1}: my shard holds {len(indices)} samples, starting {indices[:4].tolist()}",
                    extra={"all_ranks": True})
        offsets = epoch_offsets(len(train_images), recipe.max_shift, recipe.seed, epoch)
        batches = itertools.islice(_shard_batches(train_images, train_labels, indices, offsets, recipe, world),
                                   total_steps - steps)
        learning_rate, started = optimizer.param_groups[0]["lr"], time.perf_counter()
        loss, accuracy = training.train_one_epoch(
            parallel, _log_steps(batches, optimizer, steps, total_steps, log_every), optimizer, scheduler=scheduler,
            device=world.device, memory_format=memory_format, accumulate=recipe.accumulate)
        steps = min(steps + per_epoch, total_steps)
        loss, accuracy = (world.all_sum(torch.tensor([loss, accuracy], dtype=torch.float64)) / world.world_size).tolist()
        for key, value in (("train_loss", loss), ("train_accuracy", accuracy), ("learning_rate", learning_rate),
                           ("epoch_seconds", time.perf_counter() - started)):
            getattr(history, key).append(value)
        if evaluate_each_epoch:
            if world.backend is not None:  # every process evaluates rank 0's BatchNorm statistics
                for buffer in parallel.buffers():
                    dist.broadcast(buffer, src=0)
            plain = getattr(parallel, "module", parallel)  # DDP's wrapper would talk to the others in each forward
            test_loss, test_accuracy = training.evaluate(plain, test_loader, device=world.device,
                                                         all_reduce=world.all_sum)
            history.test_loss.append(test_loss)
            history.test_accuracy.append(test_accuracy)
        logger.info(f"epoch {epoch + 1}: train loss {loss:.4f}"
                    + (f", test accuracy {history.test_accuracy[-1]:.2%}" if evaluate_each_epoch else "")
                    + f", {history.epoch_seconds[-1]:.1f} s")
        if steps == total_steps:
            break
    sharded = world.backend is not None and strategy == "fsdp"
    if sharded:  # the whole model gathered on rank 0: every rank takes part
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(parallel, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = model.state_dict()  # DDP trains `model` itself
    train_seconds = sum(history.epoch_seconds)
    if world.rank == 0:  # the whole model, on the CPU, outside any wrapper; the others hold the same weights
        model = build_model(recipe.model).to(DTYPES[recipe.dtype])
        model.load_state_dict(state)
        if out is not None:  # without FSDP's optimizer state: it is sharded
            save_checkpoint(Path(out) / "checkpoint.pt", model, epoch=history.epochs, history=history,
                            optimizer=None if sharded else optimizer, scheduler=None if sharded else scheduler,
                            extra={"recipe": recipe.to_dict(), "world_size": world.world_size, "backend": world.backend,
                                   "strategy": strategy, "steps": steps, "train_seconds": round(train_seconds, 2)})
            logger.info(f"wrote checkpoint.pt ({steps} steps, {train_seconds:.1f} s)")
    return training.TrainingRun(model, history, optimizer, scheduler)


def torchrun_command(args: Sequence[str], nproc: int = 2, port: int | None = None,
                     threads_per_process: int = 1) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `nproc` local processes meeting on 127.0.0.1.

    torchrun's rendezvous store still listens on every interface: a torch limitation, closed only by a firewall.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
               "--master_port", str(port or free_port()), "-m", "mnist_guide.cli", "train-parallel", *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_per_process), PYTHONUNBUFFERED="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return command, env


def run_torchrun(args: Sequence[str], nproc: int = 2, timeout_s: float = 600.0,
                 threads_per_process: int = 1) -> subprocess.CompletedProcess:
    """Run this module under torchrun and return it with its log; a failed run raises `RuntimeError` with its cause."""
    command, env = torchrun_command(args, nproc, threads_per_process=threads_per_process)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout_s, check=False)
    if done.returncode != 0:
        lines = done.stdout.splitlines()
        causes = [line for line in lines if re.match(r"(\[rank\d+\]: )?[\w.]*(Error|Exception)\b", line)]
        raise RuntimeError(f"torchrun exited with code {done.returncode}:\n"
                           + ("\n".join(dict.fromkeys(causes)) or "\n".join(lines[-20:])))
    return done
