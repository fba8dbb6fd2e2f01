"""Data-parallel training with `torchrun`: DistributedSampler, DDP (or FSDP), rank-aware logs, one checkpoint.

Run it on two processes of this machine (gloo on the CPU, NCCL on GPUs):

    torchrun --nproc_per_node 2 -m mnist_guide.distributed --epochs 1 --out artifacts/ddp

Started without `torchrun` it trains in one process, with the same code and the same batches:
that is what lets notebooks/10_scaling_out.ipynb check that two processes reach the weights of one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from mnist_guide.data import MNIST_MEAN, MNIST_STD, mnist_tensors
from mnist_guide.models import CNNConfig, GroupNormCNN, MnistCNN
from mnist_guide.runtime import pick_device, positive_int
from mnist_guide.training import History, save_checkpoint

logger = logging.getLogger(__name__)

NORMS = ("batch", "group")
STRATEGIES = ("ddp", "fsdp")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class DistributedRecipe:
    """What a data-parallel run trains, independent of how many processes run it.

    `batch_size` is the global batch: the samples behind one optimizer step, summed over all
    processes and micro-batches. Each process takes `batch_size / world_size` of them, in
    `accumulate` micro-batches. `norm="batch"` trains the course CNN (`MnistCNN`);
    `norm="group"` trains `GroupNormCNN`, whose result does not depend on how a batch is split.
    `max_steps` stops early; the one-cycle schedule then spans the steps that run. `dtype="float64"`
    trains in double precision, where rounding is a billion times smaller: that is how two runs
    that should compute the same thing are compared (training amplifies float32 rounding).

    Taught in notebooks/10_scaling_out.ipynb.
    """

    epochs: int = 1
    batch_size: int = 256
    accumulate: int = 1
    max_steps: int | None = None
    max_lr: float = 1e-2
    betas: tuple[float, float] = (0.7, 0.9)
    max_shift: int = 1
    norm: str = "batch"
    dtype: str = "float32"
    seed: int = 0
    model: CNNConfig = field(default_factory=CNNConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1 or self.accumulate < 1:
            raise ValueError(f"batch_size and accumulate must be at least 1, got {self.batch_size} and {self.accumulate}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1 (or None for whole epochs), got {self.max_steps}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be 0 or more, got {self.max_shift}")

    def micro_batch_size(self, world_size: int) -> int:
        """Samples per forward pass on each process: `batch_size / (world_size * accumulate)`."""
        parts = world_size * self.accumulate
        if self.batch_size % parts:
            raise ValueError(
                f"the global batch of {self.batch_size} does not split into {world_size} processes × "
                f"{self.accumulate} micro-batches; pick a batch size divisible by {parts}"
            )
        return self.batch_size // parts

    def to_dict(self) -> dict:
        """The recipe as plain data, for checkpoints."""
        values = asdict(self)
        values["betas"] = list(self.betas)
        return values


@dataclass(frozen=True)
class World:
    """Who this process is: its rank among `world_size` processes, its device and backend.

    `backend` is `None` when the process runs alone (started without `torchrun`).

    Taught in notebooks/10_scaling_out.ipynb.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 logs the run and writes the files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


@dataclass
class DistributedRun:
    """What `train` returns on every rank: the trained (unwrapped) model and the run's figures."""

    model: nn.Module
    history: History
    world: World
    steps: int
    train_seconds: float
    checkpoint_path: Path | None = None


# --------------------------------------------------------------------------------------------
# Processes, devices, logs


def backend_for(device: torch.device | str) -> str:
    """NCCL for CUDA devices, gloo for the CPU: the two backends `torch.distributed` ships.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _choose_device(prefer: str | torch.device | None, local_rank: int, local_world_size: int) -> torch.device:
    """One GPU per process when there are enough of them; the CPU otherwise (MPS has no backend)."""
    if prefer is not None and torch.device(prefer).type == "cpu":
        return torch.device("cpu")
    best = pick_device(prefer)
    if best.type == "cuda" and torch.cuda.device_count() >= local_world_size:
        return torch.device("cuda", local_rank)
    if prefer is not None and torch.device(prefer).type == "cuda":
        raise RuntimeError(
            f"{local_world_size} processes need {local_world_size} GPUs, this machine has "
            f"{torch.cuda.device_count()}; start fewer processes or pass --device cpu"
        )
    return torch.device("cpu")


def init_world(device: str | torch.device | None = None, timeout_s: float = 300.0) -> World:
    """Join the process group `torchrun` set up (its RANK, WORLD_SIZE, MASTER_ADDR... variables).

    Without them the process runs alone: no process group, `backend=None`. Each process takes
    one GPU (`cuda:LOCAL_RANK`) when there is one per process, else the CPU with gloo.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    if "RANK" not in os.environ:
        chosen = _choose_device(device, 0, 1)
        return World(device=chosen)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    chosen = _choose_device(device, local_rank, local_world_size)
    backend = backend_for(chosen)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(
            backend, timeout=timedelta(seconds=timeout_s),
            device_id=chosen if chosen.type == "cuda" else None,
        )
    return World(rank, world_size, local_rank, chosen, backend)


def close_world() -> None:
    """Leave the process group (a no-op for a process running alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class RankFilter(logging.Filter):
    """Prefix each record with `[rank r/w]`; let through only rank 0's, unless marked `all_ranks`.

    `logger.info("...", extra={"all_ranks": True})` is how every process says something once
    (its shard, its device); everything else is said by rank 0 alone, so the log reads like the
    log of one program.

    Taught in notebooks/10_scaling_out.ipynb.
    """

    def __init__(self, rank: int, world_size: int) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_tag = f"[rank {self.rank}/{self.world_size}]"
        return self.rank == 0 or getattr(record, "all_ranks", False) or record.levelno >= logging.WARNING


def configure_logging(world: World, stream=None) -> logging.Handler:
    """Send this module's log to `stream` (stdout) through a `RankFilter`; returns the handler.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(logging.Formatter("%(rank_tag)s %(message)s"))
    handler.addFilter(RankFilter(world.rank, world.world_size))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def _all_sum(values: Sequence[float], world: World) -> list[float]:
    """Sum numbers over all processes (returns them unchanged for a process alone)."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=world.device)
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


# --------------------------------------------------------------------------------------------
# Data: each process its shard


def epoch_offsets(count: int, max_shift: int, seed: int, epoch: int) -> torch.Tensor:
    """Draw the augmentation of one epoch for every sample: `[count, 2]` shifts in `0..2*max_shift`.

    Drawn for the whole data set on every process and looked up by sample index, the random shift
    of a sample does not depend on which process handles it: one process and two see the same
    augmented images.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randint(0, 2 * max_shift + 1, (count, 2), generator=generator)


def shift_images(images: torch.Tensor, offsets: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Move each image by its `offsets[i] - max_shift` pixels (rows, columns), filling with black.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    if max_shift == 0:
        return images
    n, _, height, width = images.shape
    background = (0.0 - MNIST_MEAN) / MNIST_STD
    padded = F.pad(images, (max_shift,) * 4, value=background)
    rows = torch.arange(height).view(1, height, 1) + offsets[:, 0].view(n, 1, 1)
    cols = torch.arange(width).view(1, 1, width) + offsets[:, 1].view(n, 1, 1)
    return padded[torch.arange(n).view(n, 1, 1), 0, rows, cols].unsqueeze(1)


def shard_indices(dataset_size: int, world: World, *, seed: int, epoch: int) -> torch.Tensor:
    """The sample indices this process trains on in `epoch`, from a `DistributedSampler`.

    All processes shuffle with the same seed, then rank r takes every world_size-th index from
    position r, so the shards are disjoint and together hold the whole (shuffled) data set.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    sampler = DistributedSampler(
        range(dataset_size), num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def steps_per_epoch(dataset_size: int, recipe: DistributedRecipe, world_size: int) -> int:
    """Optimizer steps in one epoch: the shard of each process, in steps of `batch_size / world_size`."""
    shard = math.ceil(dataset_size / world_size)
    return math.ceil(shard / (recipe.batch_size // world_size))


# --------------------------------------------------------------------------------------------
# The training step


def build_model(recipe: DistributedRecipe) -> nn.Module:
    """The course CNN (`norm="batch"`) or its GroupNorm twin (`norm="group"`).

    Taught in notebooks/10_scaling_out.ipynb.
    """
    return MnistCNN(recipe.model) if recipe.norm == "batch" else GroupNormCNN(recipe.model)


def _sync_context(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce for a micro-batch that is not the step's last one."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2 (fully_shard)
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def accumulate_gradients(
    model: nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, int]:
    """Backpropagate a step's micro-batches, adding their gradients; returns (summed loss, correct).

    Each micro-batch's loss is the *sum* over its samples divided by the samples in the whole
    step, so the accumulated gradient is the gradient of the step's mean loss, as if it had been
    one batch (dividing each mean by k is the same when all micro-batches are equal, and wrong
    when the last one is short). Under DDP only the last micro-batch all-reduces the gradients.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    step_samples = sum(len(labels) for _, labels in micro_batches)
    total_loss, correct = 0.0, 0
    for index, (images, labels) in enumerate(micro_batches):
        with _sync_context(model, sync=index == len(micro_batches) - 1):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, reduction="sum") / step_samples
            loss.backward()
        total_loss += loss.item() * step_samples
        correct += int((logits.detach().argmax(dim=1) == labels).sum())
    return total_loss, correct


def wrap_model(model: nn.Module, world: World, strategy: str = "ddp") -> nn.Module:
    """Make `model` data parallel: DDP keeps a full copy per process, FSDP shards it across them.

    A process running alone gets its model back unchanged.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not world.distributed:
        return model
    if strategy == "ddp":
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(world.device.type, (world.world_size,))
    for block in (model.features, model.classifier):
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's piece of a parameter (FSDP shards them into DTensors), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _share_buffers(model: nn.Module, world: World) -> None:
    """Copy rank 0's buffers (BatchNorm's running statistics) to every process.

    Each process updates them from its own shard; DDP copies rank 0's at the start of each
    forward pass. Doing it once more before evaluating makes every process evaluate the weights
    rank 0 writes.
    """
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _full_state_dict(model: nn.Module, strategy: str, world: World) -> dict | None:
    """Gather the whole model's weights on rank 0 (a collective under FSDP: every rank calls it)."""
    if world.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if world.is_main else None
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {key: value.detach().cpu() for key, value in inner.state_dict().items()}


@torch.no_grad()
def evaluate_sharded(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, world: World, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean loss and accuracy over the whole test set, each process evaluating its own share.

    Every process runs the same number of batches (FSDP gathers weights in each forward).

    Taught in notebooks/10_scaling_out.ipynb.
    """
    model.eval()
    dtype = next(model.parameters()).dtype
    shard = torch.arange(world.rank, len(images), world.world_size)
    batches = math.ceil(math.ceil(len(images) / world.world_size) / batch_size)
    loss_sum, correct = 0.0, 0
    for batch in range(batches):
        index = shard[batch * batch_size : (batch + 1) * batch_size]
        x, y = images[index].to(world.device, dtype), labels[index].to(world.device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == y).sum())
    loss_sum, correct, seen = _all_sum([loss_sum, correct, len(shard)], world)
    model.train()
    return loss_sum / seen, correct / seen


def _step_batches(
    images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
    recipe: DistributedRecipe, world: World, memory_format: torch.memory_format,
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Yield each step's micro-batches for this process, augmented and on its device."""
    micro = recipe.micro_batch_size(world.world_size)
    dtype = DTYPES[recipe.dtype]
    per_step = micro * recipe.accumulate
    for start in range(0, len(indices), per_step):
        step = indices[start : start + per_step]
        micro_batches = []
        for part in step.split(micro):
            x = shift_images(images[part], offsets[part], recipe.max_shift)
            x = x.to(world.device, dtype, memory_format=memory_format)
            micro_batches.append((x, labels[part].to(world.device)))
        yield micro_batches


def train_steps(
    model: nn.Module,
    batches: Iterator[list[tuple[torch.Tensor, torch.Tensor]]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    world: World,
    *,
    first_step: int,
    total_steps: int,
    log_every: int,
) -> tuple[int, float, int, int]:
    """Take one optimizer step per item of `batches` (a step's micro-batches), until `total_steps`.

    Returns the step count reached and, summed over all processes, the loss, the correct
    predictions and the samples seen.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    model.train()
    step, loss_sum, correct, seen = first_step, 0.0, 0, 0
    for micro_batches in batches:
        if step == total_steps:
            break
        optimizer.zero_grad(set_to_none=True)
        step_loss, step_correct = accumulate_gradients(model, micro_batches)
        optimizer.step()
        scheduler.step()
        step += 1
        samples = sum(len(labels) for _, labels in micro_batches)
        loss_sum, correct, seen = loss_sum + step_loss, correct + step_correct, seen + samples
        if step % log_every == 0 or step == total_steps:
            everyone = _all_sum([step_loss, samples], world)  # the loss of the whole global batch
            logger.info(f"step {step}/{total_steps}: loss {everyone[0] / everyone[1]:.4f}")
    loss_sum, correct, seen = _all_sum([loss_sum, correct, seen], world)
    return step, loss_sum, int(correct), int(seen)


def train(
    recipe: DistributedRecipe | None = None,
    *,
    out: str | Path | None = None,
    device: str | torch.device | None = None,
    strategy: str = "ddp",
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    evaluate: bool = True,
    log_every: int = 50,
) -> DistributedRun:
    """Train with `recipe` on every process of the group (or alone); rank 0 writes `out/checkpoint.pt`.

    Every process builds the same model from the same seed, takes its shard of each epoch from a
    `DistributedSampler`, and lets DDP (or FSDP) average the gradients, so all processes take
    the same optimizer steps. `data` is `(train_images, train_labels, test_images, test_labels)`,
    MNIST when `None`. The checkpoint is written with `training.save_checkpoint`, the format
    `mnist-guide evaluate` and `training.load_checkpoint` read, by rank 0 alone.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    recipe = recipe or DistributedRecipe()
    world = init_world(device)
    micro = recipe.micro_batch_size(world.world_size)
    if data is None:
        train_images, train_labels = mnist_tensors(train=True)
        test_images, test_labels = mnist_tensors(train=False)
    else:
        train_images, train_labels, test_images, test_labels = data
    per_epoch = steps_per_epoch(len(train_images), recipe, world.world_size)
    total_steps = min(recipe.max_steps or per_epoch * recipe.epochs, per_epoch * recipe.epochs)

    torch.manual_seed(recipe.seed)  # the same initial weights in every process
    # channels_last: the layout in which this CNN's convolutions run fastest (notebook 09); FSDP
    # shards only contiguous parameters.
    fast = strategy == "ddp" or not world.distributed
    memory_format = torch.channels_last if fast else torch.contiguous_format
    model = build_model(recipe).to(world.device, DTYPES[recipe.dtype], memory_format=memory_format)
    parallel = wrap_model(model, world, strategy)
    optimizer = torch.optim.Adam(parallel.parameters(), lr=recipe.max_lr, betas=recipe.betas)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.max_lr, total_steps=total_steps)

    logger.info(
        f"{world.world_size} process(es), backend {world.backend or 'none'} on {world.device.type}, "
        f"strategy {strategy if world.distributed else 'single process'}"
    )
    logger.info(
        f"global batch {recipe.batch_size} = {world.world_size} process(es) × {recipe.accumulate} "
        f"micro-batch(es) × {micro} samples; {total_steps} steps of {per_epoch} per epoch"
    )
    held = sum(_local(p).numel() for p in parallel.parameters())
    logger.info(f"I hold {held:,} of the model's {sum(p.numel() for p in model.parameters()):,} parameters",
                extra={"all_ranks": True})
    history, step, started = History(), 0, time.perf_counter()
    for epoch in range(recipe.epochs):
        indices = shard_indices(len(train_images), world, seed=recipe.seed, epoch=epoch)
        offsets = epoch_offsets(len(train_images), recipe.max_shift, recipe.seed, epoch)
        logger.info(f"epoch {epoch + 1}: my shard holds {len(indices)} samples, starting {indices[:4].tolist()}",
                    extra={"all_ranks": True})
        learning_rate, epoch_started = optimizer.param_groups[0]["lr"], time.perf_counter()
        batches = _step_batches(train_images, train_labels, indices, offsets, recipe, world, memory_format)
        step, loss_sum, correct, seen = train_steps(
            parallel, batches, optimizer, scheduler, world, first_step=step, total_steps=total_steps, log_every=log_every
        )
        history.train_loss.append(loss_sum / seen)
        history.train_accuracy.append(correct / seen)
        history.epoch_seconds.append(time.perf_counter() - epoch_started)
        history.learning_rate.append(learning_rate)
        if evaluate:
            _share_buffers(parallel, world)
            # DDP's wrapper would talk to the other processes in each forward pass; its module does not.
            plain = parallel.module if isinstance(parallel, nn.parallel.DistributedDataParallel) else parallel
            test_loss, test_accuracy = evaluate_sharded(plain, test_images, test_labels, world)
            history.test_loss.append(test_loss)
            history.test_accuracy.append(test_accuracy)
            logger.info(f"epoch {epoch + 1}: train loss {loss_sum / seen:.4f}, test accuracy {test_accuracy:.2%}, "
                        f"{history.epoch_seconds[-1]:.1f} s")
        if step == total_steps:
            break
    train_seconds = time.perf_counter() - started

    state = _full_state_dict(parallel, strategy, world)
    if world.is_main:  # the others hold the same weights: one copy is written, by rank 0
        model = build_model(recipe).to(DTYPES[recipe.dtype])
        model.load_state_dict(state)
    checkpoint_path = Path(out) / "checkpoint.pt" if out is not None else None
    if checkpoint_path is not None and world.is_main:
        sharded = world.distributed and strategy == "fsdp"  # FSDP's optimizer state is sharded: not saved
        save_checkpoint(
            checkpoint_path, model, epoch=len(history.train_loss),
            optimizer=None if sharded else optimizer, scheduler=None if sharded else scheduler, history=history,
            extra={"recipe": recipe.to_dict(), "world_size": world.world_size, "backend": world.backend,
                   "strategy": strategy, "steps": step, "train_seconds": round(train_seconds, 2)},
        )
        logger.info(f"wrote {checkpoint_path.name} ({step} steps, {train_seconds:.1f} s)")
    return DistributedRun(model, history, world, step, train_seconds, checkpoint_path)


# --------------------------------------------------------------------------------------------
# Launching


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now, for torchrun's rendezvous.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _loopback_interface() -> str | None:
    """The loopback network interface's name (`lo` on Linux, `lo0` on macOS), if there is one."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((name for name in names if name.startswith("lo")), None)


def torchrun_command(
    args: Sequence[str], nproc: int = 2, port: int | None = None, threads_per_process: int = 1
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run this module on `nproc` local processes.

    The processes meet on the loopback address only (`127.0.0.1`, gloo bound to the loopback
    interface), and each computes with `threads_per_process` threads so that together they do
    not oversubscribe the cores.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    port = port if port is not None else free_port()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", LOOPBACK, "--master_port", str(port), "-m", "mnist_guide.distributed", *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_per_process), PYTHONUNBUFFERED="1")
    interface = _loopback_interface()
    if interface is not None:
        env.setdefault("GLOO_SOCKET_IFNAME", interface)
    return command, env


def run_torchrun(
    args: Sequence[str], nproc: int = 2, timeout_s: float = 600.0, threads_per_process: int = 1
) -> subprocess.CompletedProcess:
    """Run this module under torchrun as a child process and return it with its log (stdout + stderr).

    A failed run raises `RuntimeError` with the end of its log.

    Taught in notebooks/10_scaling_out.ipynb.
    """
    command, env = torchrun_command(args, nproc, threads_per_process=threads_per_process)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout_s, check=False)
    if done.returncode != 0:
        lines = done.stdout.splitlines()
        causes = [line for line in lines if re.match(r"(\[rank\d+\]: )?[\w.]*(Error|Exception)\b", line)]
        summary = "\n".join(dict.fromkeys(causes)) or "\n".join(lines[-20:])
        raise RuntimeError(f"torchrun exited with code {done.returncode}:\n{summary}")
    return done


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m mnist_guide.distributed` (under torchrun or alone)."""
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m mnist_guide.distributed",
        description="Data-parallel training of the course CNN; rank 0 writes OUT/checkpoint.pt.",
    )
    defaults = DistributedRecipe()
    parser.add_argument("--out", required=True, help="folder for checkpoint.pt (written by rank 0 only)")
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs, help="epochs (default: %(default)s)")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="stop after this many optimizer steps (default: whole epochs)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                        help="global batch, over all processes (default: %(default)s)")
    parser.add_argument("--accumulate", type=positive_int, default=defaults.accumulate,
                        help="micro-batches per step on each process (default: %(default)s)")
    parser.add_argument("--norm", choices=NORMS, default=defaults.norm,
                        help="batch: the course CNN; group: its GroupNorm twin (default: %(default)s)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="ddp",
                        help="ddp: a full model per process; fsdp: the model sharded (default: %(default)s)")
    parser.add_argument("--max-shift", type=int, default=defaults.max_shift,
                        help="random shift augmentation in pixels, 0 for none (default: %(default)s)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=defaults.dtype,
                        help="float64 to compare runs exactly (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: one GPU per process if enough, else cpu)")
    parser.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation after each epoch")
    parser.add_argument("--log-every", type=positive_int, default=50, help="log the loss every N steps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, join the group, train, write the checkpoint on rank 0, leave."""
    args = build_parser().parse_args(argv)
    try:
        recipe = DistributedRecipe(
            epochs=args.epochs, batch_size=args.batch_size, accumulate=args.accumulate, max_steps=args.max_steps,
            max_shift=args.max_shift, norm=args.norm, dtype=args.dtype, seed=args.seed,
        )
        recipe.micro_batch_size(int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError as error:
        print(f"mnist_guide.distributed: error: {error}", file=sys.stderr)
        return 2
    world = init_world(args.device)
    handler = configure_logging(world)
    try:
        train(recipe, out=args.out, device=args.device, strategy=args.strategy,
              evaluate=not args.no_eval, log_every=args.log_every)
    finally:
        logger.removeHandler(handler)
        close_world()
    return 0


if __name__ == "__main__":
    sys.exit(main())
